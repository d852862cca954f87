"""The README and the help stay true: commands documented, the CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli.commands import app


ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _commands() -> list[str]:
    group = typer.main.get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


def test_readme_starts_with_the_two_fresh_machine_commands() -> None:
    """The README's first code block installs and runs the demo, then installs and runs the tests."""
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block is not None
    lines = block.group(1).strip().splitlines()
    assert lines[0].endswith("capture demo") and "pip install" in lines[0]
    assert "[test]" in lines[1] and "pytest" in lines[1]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """.ci/run runs exactly the README's test command."""
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block is not None
    test_command = block.group(1).strip().splitlines()[1]
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("command", _commands())
def test_every_command_is_documented_and_has_help(command: str) -> None:
    """Each command appears in the README under its own heading and answers --help."""
    assert f"### `capture {command}`" in README
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_fsync_loss_windows_are_stated_in_help_and_readme() -> None:
    """Each fsync policy's loss window is in `capture ingest --help` and in the README."""
    result = CliRunner().invoke(app, ["ingest", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.replace("│", " ").split())
    for phrase in ("'always' loses nothing", "'interval' loses at most", "'never' loses what the OS"):
        assert phrase in text
    for policy in ("`always`", "`interval` (default)", "`never`"):
        assert policy in README


def test_the_powershell_lines_stop_at_a_failed_step() -> None:
    """The PowerShell twins of the first two lines run each step only if the one before it
    succeeded, in a way Windows PowerShell 5.1 understands (no `&&`)."""
    block = re.search(r"```powershell\n(.*?)```", README, re.S)
    assert block is not None
    first, second = block.group(1).strip().splitlines()[:2]
    for line, last in ((first, "capture demo"), (second, "pytest -q")):
        assert "&&" not in line
        steps = line.split("; ")
        assert steps[0] == "py -m venv .venv" and len(steps) == 3
        assert all(step.startswith("if ($?) { ") and step.endswith(" }") for step in steps[1:])
        assert steps[-1].endswith(f"{last} }}")


def test_the_readme_says_how_to_activate_the_venv() -> None:
    assert "source .venv/bin/activate" in README
    assert ".venv\\Scripts\\Activate.ps1" in README
