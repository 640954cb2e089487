"""Schemathesis hooks for tests/herder/test_schemathesis.py (loaded by the CLI from
schemathesis.toml, in the schemathesis process).

A daemon that a generated spawn started is killed (its volume wiped) as soon as the
checks have run on the answer: the run then holds at most one daemon container at a
time instead of one per generated name.
"""

import os

import requests
import schemathesis


@schemathesis.hook
def after_validate(context, case, response, results) -> None:
    if case.operation.path != "/daemon/v1/spawn" or response.status_code != 200:
        return
    name = response.json()["ShortName"]
    base = os.environ["HERDER_SCHEMATHESIS_URL"]
    killed = requests.get(
        f"{base}/daemon/v1/kill/{name}",
        params={"wipe": "1"},
        timeout=60,
        headers={"Authorization": f"Bearer {os.environ['HERDER_SCHEMATHESIS_TOKEN']}"},
    )
    killed.raise_for_status()


@schemathesis.hook
def filter_body(context, body) -> bool:
    """By design and beyond any schema: a spawn form whose names make one both a
    file and a folder ("0" and "0/0") is 400 bad_file_name (README, Controlled
    minions); JSON Schema cannot say that one property's name must not prefix
    another's. Such generated forms are left out, whatever the mode."""
    if not isinstance(body, dict):
        return True
    names = {str(name) for name in body}
    return not any(f"{name}/" == other[: len(name) + 1] for name in names for other in names)
