"""``capture project``, ``capture rebuild`` and ``capture sql`` as a user runs them."""

from __future__ import annotations

import csv
import io
import sqlite3
import subprocess
from pathlib import Path

import orjson
import pytest
import typer
from typer.testing import CliRunner, Result

from cli.projection_commands import register
from tests.conftest import capture_command, subprocess_env
from tests.projections.test_duckdb_views import sample_log


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    register(app)
    return app


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


def test_sql_formats(app: typer.Typer, data_dir: Path) -> None:
    sql = "SELECT kind, count(*) AS n FROM user_texts GROUP BY kind ORDER BY kind"
    as_csv = invoke(app, "sql", sql, "--data-dir", str(data_dir), "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [
        ["kind", "n"],
        ["user_message", "3"],
        ["user_transcript", "3"],
    ]
    as_json = invoke(app, "sql", sql, "--data-dir", str(data_dir), "--format", "json")
    assert orjson.loads(as_json.stdout) == [
        {"kind": "user_message", "n": 3},
        {"kind": "user_transcript", "n": 3},
    ]
    table = invoke(
        app, "sql", "SELECT conversation_id, duration FROM conversations", "--data-dir", str(data_dir)
    )
    assert table.exit_code == 0 and "conversation_id" in table.stdout and "conv_2" in table.stdout
    assert "3 rows" in table.stderr
    empty_json = invoke(app, "sql", "SELECT 1 AS x WHERE false", "--data-dir", str(data_dir), "-f", "json")
    assert orjson.loads(empty_json.stdout) == []


def test_sql_uses_the_duckdb_option(app: typer.Typer, data_dir: Path, tmp_path: Path) -> None:
    analytics = tmp_path / "views" / "mine.duckdb"
    result = invoke(
        app,
        "sql",
        "SELECT count(*) FROM events",
        "--data-dir",
        str(data_dir),
        "--duckdb",
        str(analytics),
        "-f",
        "csv",
    )
    assert result.exit_code == 0 and result.stdout.splitlines()[1] == "29"
    assert analytics.exists() and not (data_dir / "analytics.duckdb").exists()


def test_a_bad_statement_prints_duckdbs_message_and_exits_1(app: typer.Typer, data_dir: Path) -> None:
    result = invoke(app, "sql", "SELECT * FROM no_such_view", "--data-dir", str(data_dir))
    assert result.exit_code == 1
    # DuckDB's own message, with its pointer into the statement; no traceback.
    assert result.stderr.startswith("error: Catalog Error: Table with name no_such_view does not exist")
    assert "LINE 1: SELECT * FROM no_such_view" in result.stderr and "Traceback" not in result.output


def test_interactive_prompt(app: typer.Typer, data_dir: Path) -> None:
    script = "SELECT 40 +\n2 AS answer;\nSELECT * FROM nope;\nSELECT count(*) AS n FROM events;\n.quit\n"
    result = invoke(app, "sql", "--data-dir", str(data_dir), "--format", "csv", input=script)
    assert result.exit_code == 0, result.output
    assert "answer\n42" in result.stdout and "n\n29" in result.stdout
    assert "nope" in result.stderr  # an error does not end the session


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
