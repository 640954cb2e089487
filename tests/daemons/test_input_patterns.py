"""Daemon inputs are refused exactly where the OpenAPI schema's patterns say
(herder/schema.py), and only with 400s."""

import re

import pytest

from daemons.services import check_daemon_name, parse_ports
from herder.errors import BadInput
from herder.schema import DAEMON_NAME_PATTERN, ports_pattern


@pytest.mark.parametrize("raw", ['["²"]', '["８０"]', '["٨٠"]', "[80.0]", '["+80"]', '[" 80"]', "\n"])
def test_ports_that_are_not_ascii_whole_numbers_are_bad_input(raw):
    with pytest.raises(BadInput):
        parse_ports(raw)
    assert not re.search(ports_pattern(16).replace("$", r"\Z"), raw)


def test_ports_as_numbers_strings_and_tcp():
    raw = ' [8080, "443", "0080/tcp"] '
    assert parse_ports(raw) == [8080, 443, 80]
    assert re.search(ports_pattern(16).replace("$", r"\Z"), raw)


@pytest.mark.parametrize("name", ["echo\n", "Echo", "-echo", "e" * 64, "", "é"])
def test_names_outside_the_pattern_are_bad_input(name):
    with pytest.raises(BadInput):
        check_daemon_name(name)
    assert not re.search(DAEMON_NAME_PATTERN.replace("$", r"\Z"), name)
