"""``--help`` as a person reads it, and ``--version``."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from cli.commands import app


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def _commands() -> list[str]:
    group = typer.main.get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", ["", *_commands()])
def test_no_python_type_names_in_help(command: str) -> None:
    """No ``<bool>``, ``<str>``, ``<list[str]>``, ``<int range>``: flags show no value, others a name."""
    text = _help(*([command] if command else []))
    # (<data dir> is prose, not a type.)
    assert not re.search(r"<(?:[a-z_]+(?: range)?|list\[.*?\]|[a-z_-]+(?:\|[a-z_-]+)+)>", text), text


def _row(text: str, option: str) -> str:
    """The options panel's row of ``option``, its cells separated by single spaces."""
    rows = [" ".join(line.replace("│", " ").split()) for line in text.splitlines() if line.startswith("│")]
    (row,) = [row for row in rows if re.match(rf"{re.escape(option)}(?![\w-])", row)][:1]
    return row


def test_values_are_named_as_people_name_them() -> None:
    ingest = _help("ingest")
    assert _row(ingest, "--var").startswith("--var NAME=VALUE")
    assert _row(ingest, "--max-conversations").startswith("--max-conversations N [x>=1]")
    assert _row(ingest, "--fsync").startswith("--fsync always|interval|never")
    assert _row(ingest, "--audio").startswith("--audio Do not ask")  # a flag: no value
    assert _row(ingest, "--verbose").startswith("--verbose -v Log more")
    assert _row(ingest, "--agent-ws").startswith("--agent-ws --no-agent-ws Hold")
    assert _row(ingest, "--help").startswith("--help -h Show")
    assert _row(_help("sql"), "--output").startswith("--output -o FILE")
    assert _row(_help("sql"), "SQL").startswith("SQL A statement that reads")
    assert _row(_help("backfill"), "--since").startswith("--since WHEN")


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert re.fullmatch(r"capture \S+\n", result.output)
    assert "--version" in _help()
