"""Bad input is refused with a JSON error before Docker is touched."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings

from minions.models import MinionRun

pytestmark = pytest.mark.django_db


def spawn(fields):
    return Client().post("/minion/v1/spawn", fields)


def assert_error(response, status, code, *, runs=0):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code
    assert body["detail"]
    assert MinionRun.objects.count() == runs
    return body


@pytest.mark.parametrize("name", ["../escape.py", "a/../../b", "/etc/passwd", "a\\b.py", "a\nb", "a//b", "./a"])
def test_bad_file_names_are_refused(name):
    assert_error(spawn({"env": "python", name: "x"}), 400, "bad_file_name")


def test_a_nul_byte_in_an_uploaded_name_is_refused():
    # Form encoding can carry a NUL that a multipart header cannot.
    response = Client().post("/minion/v1/spawn", "env=python&a%00b=x", content_type="application/x-www-form-urlencoded")
    assert_error(response, 400, "bad_file_name")


@pytest.mark.parametrize("output", ["../x", "/etc/passwd"])
def test_bad_output_names_are_refused(output):
    assert_error(spawn({"env": "python", "main.py": "", "output": output}), 400, "bad_file_name")


def test_a_name_both_file_and_folder_is_refused():
    assert_error(spawn({"env": "python", "a": "x", "a/b": "y"}), 400, "bad_file_name")


def test_missing_env_names_the_known_envs():
    body = assert_error(spawn({"main.py": "print(1)"}), 400, "unknown_env")
    for env in ("latex", "node", "python", "ruby"):
        assert env in body["detail"]


def test_unknown_env_names_the_known_envs():
    body = assert_error(spawn({"env": "cobol", "main.py": "x"}), 400, "unknown_env")
    assert "cobol" in body["detail"] and "python" in body["detail"]


def test_too_many_files(settings):
    fields = {"env": "python", **{f"f{i}.txt": "x" for i in range(settings.HERDER_MINION_MAX_FILES + 1)}}
    assert_error(spawn(fields), 413, "payload_too_large")


def test_too_many_bytes_in_uploads(settings):
    big = SimpleUploadedFile("big.bin", b"\0" * (settings.HERDER_MINION_MAX_BYTES + 1))
    assert_error(spawn({"env": "python", "big.bin": big}), 413, "payload_too_large")


def test_a_body_far_past_the_limit_is_refused_before_it_is_read(settings):
    big = SimpleUploadedFile("big.bin", b"\0" * (settings.HERDER_MINION_MAX_BYTES + 2 * 1024 * 1024))
    assert_error(spawn({"env": "python", "big.bin": big}), 413, "payload_too_large")


def test_get_is_refused_as_json():
    response = Client().get("/minion/v1/spawn")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_docker_unreachable_is_a_503():
    # The engine is real elsewhere; here the herder is pointed at a socket no
    # engine listens on, which is what a stopped engine looks like to it.
    with override_settings(DOCKER_HOST="unix:///nonexistent/docker.sock"):
        response = spawn({"env": "python", "main.py": "print(1)"})
    body = assert_error(response, 503, "runtime_unavailable", runs=1)
    assert "Traceback" not in body["detail"]
    # The failed attempt is still audited.
    assert MinionRun.objects.get().error.startswith("RuntimeUnavailable")
