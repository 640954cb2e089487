import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.exceptions import ImproperlyConfigured

from accounts.keys import token_key_pair


def pem_pair(bits: int = 2048) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_keys_are_created_on_first_start_and_kept(tmp_path):
    private, public = token_key_pair(private_pem="", public_pem="", data_dir=tmp_path)

    assert (tmp_path / "token_private.pem").read_text() == private
    assert (tmp_path / "token_private.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "token_public.pem").read_text() == public
    assert token_key_pair(private_pem="", public_pem="", data_dir=tmp_path) == (private, public)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_lost_public_key_file_is_written_again(tmp_path):
    _, public = token_key_pair(private_pem="", public_pem="", data_dir=tmp_path)
    (tmp_path / "token_public.pem").unlink()

    assert token_key_pair(private_pem="", public_pem="", data_dir=tmp_path)[1] == public
    assert (tmp_path / "token_public.pem").read_text() == public


def test_configured_keys_win_and_nothing_is_written(tmp_path):
    private, public = pem_pair()

    got_private, got_public = token_key_pair(private_pem=private, public_pem=public, data_dir=tmp_path)

    assert got_private.strip() == private.strip()
    assert "".join(got_public.split()) == "".join(public.split())
    assert list(tmp_path.iterdir()) == []


def test_a_configured_private_key_alone_is_enough(tmp_path):
    private, public = pem_pair()

    assert token_key_pair(private_pem=private, public_pem="", data_dir=tmp_path)[1].strip() == public.strip()


def test_a_public_key_that_does_not_match_is_refused(tmp_path):
    private, _ = pem_pair()
    _, other_public = pem_pair()

    with pytest.raises(ImproperlyConfigured, match="not the public half"):
        token_key_pair(private_pem=private, public_pem=other_public, data_dir=tmp_path)


def test_a_public_key_without_its_private_key_is_refused(tmp_path):
    _, public = pem_pair()

    with pytest.raises(ImproperlyConfigured, match="without HERDER_TOKEN_PRIVATE_KEY"):
        token_key_pair(private_pem="", public_pem=public, data_dir=tmp_path)


def test_a_private_key_that_is_not_pem_is_refused(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="not an unencrypted PEM"):
        token_key_pair(private_pem="hello", public_pem="", data_dir=tmp_path)
