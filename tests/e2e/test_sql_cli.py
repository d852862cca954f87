"""``capture sql`` as a user (or someone with a bad idea) runs it: it reads, it never writes the data dir."""

from __future__ import annotations

import csv
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import orjson
import pytest
from typer.testing import CliRunner, Result

from cli.commands import app
from ingest.log.envelope import Origin, encode_line
from ingest.log.frames import inspect_frame
from ingest.log.segments import list_segments
from ingest.log.writer import events_dir
from tests.conftest import TIMEOUT_FACTOR, capture_command, subprocess_env
from tests.e2e.commands import TIMEOUT, capture, one_line, start
from tests.projections.test_duckdb_views import sample_log


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    sample_log(path)
    return path


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input)


def sql(data_dir: Path, *args: str, input: str | None = None) -> Result:
    return invoke("sql", "--data-dir", str(data_dir), *args, input=input)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _forged_line(seq: int) -> str:
    """A valid log line (right crc32) saying a user said something they never said."""
    frame = inspect_frame(
        '{"type":"user_transcript","user_transcription_event":{"user_transcript":"FORGED","event_id":9}}'
    )
    origin = Origin("agent_ws", "in", "agent_x", "conn-9", "conv_9")
    return encode_line(seq, "2026-01-01T00:00:00.000000Z", origin, frame).decode().rstrip("\n")


def test_a_copy_into_the_log_is_refused_and_nothing_is_forged(data_dir: Path) -> None:
    """Issue 11 §4: COPY ... TO a closed segment (and to a new one) changes nothing in the log."""
    events = events_dir(data_dir)
    closed = list_segments(events)[0]
    before = _snapshot(events)
    next_seq = 30  # sample_log wrote 29 lines
    new_segment = events / f"{next_seq:020d}.jsonl"
    for target, seq in ((closed, 1), (new_segment, next_seq)):
        line = _forged_line(seq).replace("'", "''")
        statement = f"COPY (SELECT '{line}' AS line) TO '{target}' (FORMAT csv, HEADER false, QUOTE '')"
        result = capture("sql", statement, "--data-dir", str(data_dir))
        assert result.returncode == 2, result.stderr
        assert "COPY" in one_line(result.stderr) and "Traceback" not in result.stderr
    assert _snapshot(events) == before
    rebuild = capture("rebuild", "--data-dir", str(data_dir))
    assert rebuild.returncode == 0, rebuild.stderr
    conn = sqlite3.connect(data_dir / "whatsapp_storage.db")
    try:
        assert conn.execute("SELECT count(*) FROM user_texts WHERE text = 'FORGED'").fetchone() == (0,)
    finally:
        conn.close()


@pytest.mark.parametrize(
    "statement",
    [
        "COPY (SELECT 1) TO 'x.csv'",
        "EXPORT DATABASE 'dump'",
        "ATTACH 'other.duckdb'",
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO events SELECT * FROM events",
        "DROP VIEW events",
        "SET threads = 1",
        "INSTALL httpfs",
        "LOAD json",
        "CHECKPOINT",
        "PRAGMA threads = 1",
        "EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'",
        "PIVOT events ON type",
    ],
)
def test_statements_that_do_not_read_are_refused(
    data_dir: Path, statement: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line, exit 2, and nothing written anywhere."""
    monkeypatch.chdir(tmp_path)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    result = sql(data_dir, statement)
    assert result.exit_code == 2, result.output
    assert one_line(result.stderr).startswith("error: capture sql ")
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "statement",
    [
        "SHOW TABLES",
        "DESCRIBE events",
        "SUMMARIZE SELECT seq FROM events",
        "EXPLAIN SELECT count(*) FROM events",
        "EXPLAIN ANALYZE SELECT count(*) FROM events",
        "WITH t AS (SELECT 1 AS x) SELECT * FROM t",
        "FROM events LIMIT 1",
        "VALUES (1), (2)",
        "PIVOT events ON type IN ('ping') USING count(*) GROUP BY source",
        "/* a comment first */ SELECT 1;\n-- and after",
    ],
)
def test_statements_that_read_run(data_dir: Path, statement: str) -> None:
    result = sql(data_dir, statement, "-f", "csv")
    assert result.exit_code == 0, result.output


def test_settings_are_locked_so_no_select_writes_files(data_dir: Path, tmp_path: Path) -> None:
    """``SELECT * FROM enable_logging(storage='file', …)`` would write log files: the configuration is locked."""
    target = tmp_path / "logs"
    target.mkdir()
    result = sql(data_dir, f"SELECT * FROM enable_logging(storage = 'file', storage_path = '{target}')")
    assert result.exit_code == 1  # DuckDB's message (with its pointer into the statement)
    assert "the configuration has been locked" in result.stderr.splitlines()[0]
    assert sql(data_dir, "SELECT 1").exit_code == 0
    assert list(target.iterdir()) == []


def test_one_statement_per_call_unless_multiple(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    both = "SELECT 1 AS a; SELECT 2 AS b"
    refused = sql(data_dir, both, "-f", "csv")
    assert refused.exit_code == 2
    assert "--multiple" in one_line(refused.stderr)
    ran = sql(data_dir, both, "-f", "csv", "--multiple")
    assert ran.exit_code == 0, ran.output
    assert ran.stdout == "a\n1\nb\n2\n"
    mixed = sql(data_dir, "SELECT 1; COPY (SELECT 1) TO 'x.csv'", "--multiple")
    assert mixed.exit_code == 2 and mixed.stdout == ""  # nothing runs when one is refused
    assert not Path("x.csv").exists()
    for empty in ("", "  ;  ", "-- nothing"):
        assert sql(data_dir, empty).exit_code == 2


def test_sql_formats(data_dir: Path) -> None:
    query = "SELECT kind, count(*) AS n FROM user_texts GROUP BY kind ORDER BY kind"
    as_csv = sql(data_dir, query, "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [
        ["kind", "n"],
        ["user_message", "3"],
        ["user_transcript", "3"],
    ]
    as_json = sql(data_dir, query, "--format", "json")
    assert orjson.loads(as_json.stdout) == [
        {"kind": "user_message", "n": 3},
        {"kind": "user_transcript", "n": 3},
    ]
    table = sql(data_dir, "SELECT conversation_id, duration FROM conversations")
    assert table.exit_code == 0 and "conversation_id" in table.stdout and "conv_2" in table.stdout
    assert "3 rows" in table.stderr
    empty_json = sql(data_dir, "SELECT 1 AS x WHERE false", "-f", "json")
    assert orjson.loads(empty_json.stdout) == []


def test_csv_and_json_give_values_their_types(data_dir: Path) -> None:
    """Durations in seconds, timestamps in ISO 8601, lists and JSON as JSON — not Python reprs."""
    query = (
        "SELECT conversation_id, first_event_at, duration, sources, ['a', 'b'] AS list, {'k': 1} AS struct,"
        " 1.50::DECIMAL(5, 2) AS price, NULL AS nothing FROM conversations ORDER BY conversation_id LIMIT 1"
    )
    (header, row) = list(csv.reader(io.StringIO(sql(data_dir, query, "-f", "csv").stdout)))
    record = dict(zip(header, row, strict=True))
    assert record["first_event_at"].endswith("Z") and "T" in record["first_event_at"]
    assert float(record["duration"]) >= 0 and ":" not in record["duration"]
    assert orjson.loads(record["sources"]) == ["agent_ws"]
    assert record["list"] == '["a","b"]' and record["struct"] == '{"k":1}'
    assert record["price"] == "1.50" and record["nothing"] == ""
    (value,) = orjson.loads(sql(data_dir, query, "-f", "json").stdout)
    assert value["sources"] == ["agent_ws"] and value["list"] == ["a", "b"] and value["struct"] == {"k": 1}
    assert isinstance(value["duration"], float) and value["price"] == 1.5 and value["nothing"] is None
    assert value["first_event_at"] == record["first_event_at"]
    # The table shows the same text as the CSV.
    table = sql(data_dir, query.replace("conversation_id, ", "").replace(", NULL AS nothing", ""))
    assert '["agent_ws"]' in table.stdout and record["first_event_at"] in table.stdout


def test_sources_read_the_same_in_sqlite_and_both_views(data_dir: Path) -> None:
    """JSON array text in SQLite; JSON in both DuckDB views, printed and exported as the same text."""
    assert invoke("rebuild", "--data-dir", str(data_dir)).exit_code == 0
    conn = sqlite3.connect(data_dir / "whatsapp_storage.db")
    (stored,) = conn.execute("SELECT DISTINCT sources FROM user_texts").fetchone()
    conn.close()
    for view in ("user_texts", "conversations"):
        result = sql(data_dir, f"SELECT DISTINCT sources FROM {view}", "-f", "csv")
        assert result.stdout.splitlines()[1:] == [f'"{stored.replace(chr(34), chr(34) * 2)}"']
        types = sql(data_dir, f"SELECT DISTINCT typeof(sources) AS t FROM {view}", "-f", "csv")
        assert types.stdout.splitlines()[1:] == ["JSON"]


def test_sql_uses_the_duckdb_option(data_dir: Path, tmp_path: Path) -> None:
    analytics = tmp_path / "views" / "mine.duckdb"
    result = sql(data_dir, "SELECT count(*) FROM events", "--duckdb", str(analytics), "-f", "csv")
    assert result.exit_code == 0 and result.stdout.splitlines()[1] == "29"
    assert analytics.exists() and not (data_dir / "analytics.duckdb").exists()


def test_a_bad_statement_prints_duckdbs_message_and_exits_1(data_dir: Path) -> None:
    result = sql(data_dir, "SELECT * FROM no_such_view")
    assert result.exit_code == 1
    # DuckDB's own message, with its pointer into the statement; no traceback.
    assert result.stderr.startswith("error: Catalog Error: Table with name no_such_view does not exist")
    assert "LINE 1: SELECT * FROM no_such_view" in result.stderr and "Traceback" not in result.output
    assert sql(data_dir, "SELEC 1").exit_code == 1


def test_interactive_prompt(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    script = (
        "SELECT 40 +\n2 AS answer;\nSELECT * FROM nope;\nCOPY (SELECT 1) TO 'x.csv';\n"
        "SELECT 1 AS a; SELECT 2 AS b;\nSELECT count(*) AS n FROM events;\n.quit\n"
    )
    result = sql(data_dir, "--format", "csv", input=script)
    assert result.exit_code == 0, result.output
    assert "answer\n42" in result.stdout and "n\n29" in result.stdout and "a\n1\nb\n2\n" in result.stdout
    # An error or a refusal does not end the session.
    assert "nope" in result.stderr and "a COPY statement is refused" in result.stderr
    assert not Path("x.csv").exists()


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_output_writes_a_file_whole(data_dir: Path, tmp_path: Path, fmt: str) -> None:
    target = tmp_path / "out" / f"conversations.{fmt}"
    target.parent.mkdir()
    query = "SELECT conversation_id, duration, sources FROM conversations ORDER BY 1"
    result = sql(data_dir, query, "--output", str(target))  # the format from the extension
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and str(target) in one_line(result.stderr)
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no scratch file left
    conn = duckdb.connect()
    reader = {"csv": "read_csv", "json": "read_json", "parquet": "read_parquet"}[fmt]
    rows = conn.execute(f"SELECT conversation_id FROM {reader}('{target}')").fetchall()
    assert rows == [("conv_1",), ("conv_2",), ("conv_3",)]
    durations = conn.execute(f"SELECT duration FROM {reader}('{target}') ORDER BY 1").fetchall()
    expected = sql(data_dir, "SELECT epoch(duration) FROM conversations ORDER BY 1", "-f", "csv")
    assert [str(float(d)) for (d,) in durations] == expected.stdout.splitlines()[1:]  # seconds, whole
    explicit = tmp_path / "out" / "any.name"
    assert sql(data_dir, query, "-o", str(explicit), "-f", fmt).exit_code == 0 and explicit.exists()


def test_output_is_never_written_in_the_data_dir(data_dir: Path, tmp_path: Path) -> None:
    events = events_dir(data_dir)
    before = _snapshot(events)
    link = tmp_path / "innocent.csv"
    link.symlink_to(list_segments(events)[0])
    for target in (
        events / "00000000000000000030.jsonl",
        data_dir / "export.csv",
        tmp_path / "elsewhere" / ".." / "data" / "events" / "x.csv",
        link,
    ):
        result = sql(data_dir, "SELECT 1", "--output", str(target), "--format", "csv")
        assert result.exit_code == 2, result.output
        assert "never writes there" in one_line(result.stderr)
    assert _snapshot(events) == before
    analytics = tmp_path / "views" / "mine.duckdb"
    analytics.parent.mkdir()
    beside = analytics.with_name("beside.csv")
    args = ("SELECT 1 AS x", "--duckdb", str(analytics), "-f", "csv")
    assert sql(data_dir, *args, "-o", str(analytics)).exit_code == 2
    assert sql(data_dir, *args, "-o", str(beside)).exit_code == 0 and beside.read_text() == "x\n1\n"


def test_output_flags_are_checked(data_dir: Path, tmp_path: Path) -> None:
    for args, says in (
        (["SELECT 1", "-f", "parquet"], "--output FILE"),
        (["SELECT 1", "-o", str(tmp_path / "x.txt")], "--format csv|json|parquet"),
        (["SELECT 1", "-o", str(tmp_path / "x.csv"), "-f", "table"], "--format csv|json|parquet"),
        (["SELECT 1", "-o", str(tmp_path / "no" / "x.csv")], "does not exist"),
        (["SELECT 1; SELECT 2", "--multiple", "-o", str(tmp_path / "x.csv")], "--output writes one result"),
        (["-o", str(tmp_path / "x.csv")], "need a statement"),
    ):
        result = sql(data_dir, *args)
        assert result.exit_code == 2, (args, result.output)
        assert says in one_line(result.stderr), args


def test_a_misspelled_data_dir_is_no_log_and_nothing_is_created(tmp_path: Path) -> None:
    """status, project, rebuild and sql say there is no log there (exit 2) instead of answering 0 rows."""
    wrong = tmp_path / "dta"
    for command in (["status"], ["project"], ["rebuild"], ["sql", "SELECT 1"], ["sql"]):
        result = invoke(*command, "--data-dir", str(wrong))
        assert result.exit_code == 2, (command, result.output)
        assert one_line(result.stderr).startswith(f"error: no log in {wrong}")
        assert not wrong.exists()
    wrong.mkdir()
    result = invoke("status", "--data-dir", str(wrong))
    assert result.exit_code == 2 and "no events/ folder" in result.stderr
    assert list(wrong.iterdir()) == []


def test_a_redirected_table_is_written_whole(data_dir: Path) -> None:
    """Not a terminal: no width limit, nothing cut short."""
    result = sql(data_dir, "SELECT * FROM conversations ORDER BY conversation_id")
    assert result.exit_code == 0
    assert "…" not in result.stdout
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) > 80
    for column in ("conversation_id", "first_event_at", "end_error_message", "sources"):
        assert column in lines[1]


def _in_terminal(args: list[str], columns: int = 80) -> str:
    """Run ``capture *args`` with a pseudo-terminal of ``columns`` as its stdout; what it showed."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from cli.app import main; main()", *args],
        stdout=follower,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal's other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=TIMEOUT)
    os.close(leader)
    assert proc.returncode == 0
    text = b"".join(chunks).decode()
    return text.replace("\r\n", "\n")


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX pseudo-terminal")
def test_a_table_fits_the_terminal(data_dir: Path) -> None:
    """At 80 columns: a wide result is one record per row, a narrow one a table; nothing cut to '…'."""
    import re

    plain = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
    wide = plain.sub("", _in_terminal(["sql", "SELECT * FROM conversations", "--data-dir", str(data_dir)]))
    assert "…" not in wide and max(len(line) for line in wide.splitlines()) <= 80
    assert "row 1" in wide and "row 3" in wide
    for column in ("conversation_id", "first_event_at", "end_error_message", "sources"):
        assert column in wide
    narrow = plain.sub(
        "", _in_terminal(["sql", "SELECT session_id, text FROM user_texts", "--data-dir", str(data_dir)])
    )
    assert "…" not in narrow and max(len(line) for line in narrow.splitlines()) <= 80
    assert "session_id" in narrow and "Olá, I need help" in narrow and "row 1" not in narrow
    # Words wrap, ids do not: a column that cannot wrap between words is kept whole.
    query = (
        "SELECT 'conv_' || repeat('x', 24) AS id, repeat('some words ', 30) AS said, seq FROM events LIMIT 2"
    )
    mixed = plain.sub("", _in_terminal(["sql", query, "--data-dir", str(data_dir)]))
    assert max(len(line) for line in mixed.splitlines()) <= 80 and "row 1" not in mixed
    assert mixed.count("conv_" + "x" * 24) == 2 and "…" not in mixed


#: Long enough that nobody waits for it: it is cancelled, or the test fails on its timeout.
_FOREVER = "SELECT sum(hash(i)) FROM range(1000000000000) t(i)"


def _read_until(stream: io.TextIOBase | None, text: str) -> None:
    assert stream is not None
    deadline = time.monotonic() + TIMEOUT
    seen = ""
    while text not in seen:
        assert time.monotonic() < deadline, f"{text!r} never appeared"
        line = stream.readline()
        assert line, f"the output ended before {text!r}: {seen!r}"
        seen += line


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_cancels_a_long_query_at_once(data_dir: Path) -> None:
    """One line, exit 130, and well before the query could end (it would run for hours)."""
    proc = start(
        "sql", "--multiple", "-f", "csv", f"SELECT 'ready' AS x; {_FOREVER}", "--data-dir", str(data_dir)
    )
    try:
        _read_until(proc.stdout, "ready")
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert one_line(err) == "query cancelled"
    assert elapsed < 10 * TIMEOUT_FACTOR


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_in_the_prompt_cancels_the_statement_and_the_prompt_stays(data_dir: Path) -> None:
    proc = subprocess.Popen(
        [*capture_command(), "sql", "-f", "csv", "--data-dir", str(data_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(f"SELECT 'ready' AS x; {_FOREVER};\n")
        proc.stdin.flush()
        _read_until(proc.stdout, "ready")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate("SELECT 'still here' AS y;\n", timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "still here" in out
    assert "query cancelled" in err and "Traceback" not in err


def test_a_closed_pipe_is_a_normal_end(data_dir: Path) -> None:
    """``capture sql … | head -1``: exit 0, nothing on stderr."""
    proc = start("sql", "-f", "csv", "SELECT * FROM range(10000000)", "--data-dir", str(data_dir))
    assert proc.stdout is not None
    assert proc.stdout.readline() == "range\n"
    proc.stdout.close()
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.wait(timeout=TIMEOUT) == 0, err
    assert err == ""


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell")
def test_head_in_a_shell_pipeline(data_dir: Path) -> None:
    command = [*capture_command(), "sql", "-f", "csv", "SELECT * FROM range(10000000)"]
    quoted = " ".join("'" + part.replace("'", "'\\''") + "'" for part in command)
    result = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {quoted} --data-dir '{data_dir}' | head -1"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "range\n" and result.stderr == ""


def test_output_is_utf8_whatever_the_code_page(data_dir: Path) -> None:
    """A redirected stdout on Windows is cp1252: capture writes UTF-8 anyway (emulated)."""
    env = {"PYTHONIOENCODING": "cp1252"}
    query = "SELECT text || ' 🙏' AS text FROM user_texts ORDER BY id LIMIT 1"
    for fmt in ("table", "csv", "json"):
        proc = subprocess.run(
            [*capture_command(), "sql", query, "-f", fmt, "--data-dir", str(data_dir)],
            capture_output=True,
            env=subprocess_env(**env),
            timeout=TIMEOUT,
        )
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        assert "Olá, I need help 🙏" in proc.stdout.decode("utf-8")
