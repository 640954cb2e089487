"""The token key pair: configured, or created once in the herder's data folder.

Imported by herder/settings.py, so it must not import Django models.
"""

import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.exceptions import ImproperlyConfigured

from herder.secretfiles import create_once, read_secret

PRIVATE_FILE = "token_private.pem"
PUBLIC_FILE = "token_public.pem"
KEY_SIZE = 3072


def _load_private(pem: str, origin: str) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"{origin} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ImproperlyConfigured(f"{origin} must be an RSA key (tokens are signed RS512 or PS512).")
    return key


def _public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def token_key_pair(*, private_pem: str, public_pem: str, data_dir: Path) -> tuple[str, str]:
    """The (private, public) PEM pair that signs and verifies tokens.

    Configured keys win: a private key alone is enough (its public half is
    derived); a public key must match it. With none configured, the pair
    lives in `data_dir` (token_private.pem, mode 0600; token_public.pem),
    created on first start. Raises ImproperlyConfigured.
    """
    private_pem, public_pem = private_pem.strip(), public_pem.strip()
    if private_pem:
        key = _load_private(private_pem, "HERDER_TOKEN_PRIVATE_KEY")
        derived = _public_pem(key)
        if public_pem and not _same_public_key(public_pem, key):
            raise ImproperlyConfigured("HERDER_TOKEN_PUBLIC_KEY is not the public half of HERDER_TOKEN_PRIVATE_KEY.")
        return private_pem + "\n", derived
    if public_pem:
        raise ImproperlyConfigured(
            "HERDER_TOKEN_PUBLIC_KEY is set without HERDER_TOKEN_PRIVATE_KEY: "
            "the herder needs the private key to mint tokens."
        )

    private_path = data_dir / PRIVATE_FILE
    if not private_path.exists():
        new_key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
        text = new_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        # Atomic and exclusive: of two first starts, both end with the winner's key.
        create_once(private_path, text.encode())
    # An empty or damaged file is an error with the file's name, never a key.
    private_text = read_secret(private_path, what="the token signing key") + "\n"
    derived = _public_pem(_load_private(private_text, str(private_path)))
    public_path = data_dir / PUBLIC_FILE
    if not public_path.exists() or _normalised(public_path.read_text()) != _normalised(derived):
        # For operators and other services that verify tokens; never read back.
        tmp = public_path.with_name(f".{public_path.name}.{secrets.token_hex(8)}")
        tmp.write_text(derived)
        tmp.chmod(0o644)
        os.replace(tmp, public_path)
    return private_text, derived


def _normalised(pem: str) -> str:
    return "".join(pem.split())


def _same_public_key(public_pem: str, key: rsa.RSAPrivateKey) -> bool:
    try:
        public = serialization.load_pem_public_key(public_pem.encode())
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"HERDER_TOKEN_PUBLIC_KEY is not a PEM public key: {exc}") from exc
    return isinstance(public, rsa.RSAPublicKey) and public.public_numbers() == key.public_key().public_numbers()
