"""The parsers of option values: sizes, dynamic variables, moments."""

from __future__ import annotations

import pytest

from cli.options import parse_moment, parse_size, parse_vars
from ingest.errors import ConfigError


def test_parse_size() -> None:
    assert parse_size("64MiB") == 64 * 2**20
    assert parse_size("500kb") == 500_000
    assert parse_size(" 1048576 ") == 1048576
    assert parse_size("1.5KiB") == 1536
    with pytest.raises(ConfigError, match="--segment-size 'lots' is not a size"):
        parse_size("lots")
    with pytest.raises(ConfigError, match="--max-body must be at least 1 byte") as small:
        parse_size("0", "--max-body")
    assert small.value.exit_code == 2


def test_parse_vars_keeps_values_as_strings() -> None:
    assert parse_vars(["plan=pro", " n = 0123", "empty="]) == {"plan": "pro", "n": " 0123", "empty": ""}
    for bad in ("novalue", "=x"):
        with pytest.raises(ConfigError, match="is not name=value"):
            parse_vars([bad])


def test_parse_moment() -> None:
    now = 1_800_000_000.0
    assert parse_moment("1767225600", now) == 1767225600
    assert parse_moment("2026-01-01", now) == 1767225600
    assert parse_moment("2026-01-01T01:00:00+01:00", now) == 1767225600
    assert parse_moment("2026-01-01T00:00:00Z", now) == 1767225600
    assert parse_moment("7d", now) == now - 7 * 86400
    assert parse_moment("90m", now) == now - 5400
    with pytest.raises(ConfigError, match="--until"):
        parse_moment("yesterday", now, "--until")
