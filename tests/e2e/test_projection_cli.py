"""``capture project`` and ``capture rebuild`` as a user runs them (``capture sql``: test_sql_cli)."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from cli.commands import app as capture_app
from tests.conftest import capture_command, subprocess_env
from tests.projections.test_duckdb_views import sample_log


@pytest.fixture
def app() -> typer.Typer:
    return capture_app


def invoke(app: typer.Typer, *args: str, input: str | None = None, **env: str) -> Result:
    return CliRunner().invoke(app, list(args), input=input, env=env or None)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    sample_log(path)
    return path


def test_project_then_project_again(app: typer.Typer, data_dir: Path) -> None:
    first = invoke(app, "project", "--data-dir", str(data_dir))
    assert first.exit_code == 0, first.output
    assert "rows written" in first.stdout and "skipped: duplicate_turn" in first.stdout
    assert (data_dir / "whatsapp_storage.db").exists()
    again = invoke(app, "project", "--data-dir", str(data_dir))
    assert again.exit_code == 0
    assert "lines read  " in again.stdout or "lines read" in again.stdout


def test_environment_variables_choose_the_files(app: typer.Typer, data_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "elsewhere.db"
    result = invoke(app, "rebuild", CAPTURE_DATA_DIR=str(data_dir), WHATSAPP_DB_PATH=str(db))
    assert result.exit_code == 0, result.output
    assert "renamed" in result.stdout and "29" in result.stdout
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM user_texts").fetchone() == (6,)
    conn.close()
    assert not (data_dir / "whatsapp_storage.db").exists()


def test_a_database_that_needs_a_rebuild_says_so(app: typer.Typer, data_dir: Path) -> None:
    assert invoke(app, "project", "--data-dir", str(data_dir)).exit_code == 0
    conn = sqlite3.connect(data_dir / "whatsapp_storage.db")
    conn.execute("UPDATE projection_state SET schema_version = 0")
    conn.commit()
    conn.close()
    result = invoke(app, "project", "--data-dir", str(data_dir))
    assert result.exit_code == 1
    assert "capture rebuild" in result.stderr and "Traceback" not in result.output
    assert invoke(app, "rebuild", "--data-dir", str(data_dir)).exit_code == 0
    assert invoke(app, "project", "--data-dir", str(data_dir)).exit_code == 0


def test_the_installed_command_line_runs_them(data_dir: Path) -> None:
    """Through cli.app, in a real process: rebuild, then a query."""
    env = subprocess_env()
    rebuild = subprocess.run(
        [*capture_command(), "rebuild", "--data-dir", str(data_dir)], env=env, capture_output=True, text=True
    )
    assert rebuild.returncode == 0, rebuild.stderr
    assert "rows written" in rebuild.stdout
    sql = subprocess.run(
        [
            *capture_command(),
            "sql",
            "SELECT count(*) FROM user_texts",
            "--data-dir",
            str(data_dir),
            "-f",
            "csv",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert sql.returncode == 0, sql.stderr
    assert sql.stdout.splitlines()[1] == "6"
