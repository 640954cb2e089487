"""deploy/stack.yml renders with the docker client's own loader for Swarm
stacks (`docker stack config`), deploy/compose.yml with the host's Compose
tool (`deploy/compose.sh config`: the `docker compose` plugin or Debian's
docker-compose, which deploy/test.sh installs); each schema rejects unknown
keys and wrong shapes. tests/deploy/test_compose.py runs compose.yml."""

import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.docker]

ROOT = Path(__file__).resolve().parents[2]


def rendered(name: str, tmp_path) -> dict:
    done = subprocess.run(
        ["docker", "stack", "config", "-c", f"deploy/{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HERDER_SECRETS_DIR": str(tmp_path), "HOME": str(tmp_path)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_stack_file(tmp_path):
    stack = rendered("stack.yml", tmp_path)
    assert set(stack["services"]) == {"postgres", "redis", "herder", "front"}
    for name, service in stack["services"].items():
        # No IPVS on these engines: virtual IPs answer nothing.
        assert service["deploy"]["endpoint_mode"] == "dnsrr", name
        assert "healthcheck" in service, name
    assert stack["services"]["herder"]["environment"]["HERDER_RUNTIME"] == "swarm"
    assert [p["mode"] for p in stack["services"]["front"]["ports"]] == ["host"]
    assert stack["networks"]["herder"]["attachable"] is True
    assert all(str(s["file"]).startswith(str(tmp_path)) for s in stack["secrets"].values())


def test_compose_file(tmp_path):
    done = subprocess.run(
        ["bash", "deploy/compose.sh", "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HERDER_SECRETS_DIR": str(tmp_path),
            "HOME": str(tmp_path),
            "HERDER_STACK": "herder-test-files",
        },
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    compose = yaml.safe_load(done.stdout)
    assert set(compose["services"]) == {"postgres", "redis", "herder"}
    for name, service in compose["services"].items():
        assert "healthcheck" in service, name
    herder = compose["services"]["herder"]
    assert herder["network_mode"] == "host"
    # Started once PostgreSQL and Redis are healthy, not merely started.
    assert {name: d["condition"] for name, d in herder["depends_on"].items()} == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
    }
    assert all(key.endswith("_FILE") for key in herder["environment"] if "KEY" in key or "PASSWORD" in key)
    assert all(str(s["file"]).startswith(str(tmp_path)) for s in compose["secrets"].values())
    # PostgreSQL and Redis only on loopback (read the file: the tools render ports differently).
    raw = yaml.safe_load((ROOT / "deploy/compose.yml").read_text())
    for name in ("postgres", "redis"):
        assert all(p.startswith("127.0.0.1:") for p in raw["services"][name]["ports"]), name
