"""DuckDB views over the segments: they work, follow the log, survive moves and torn tails, match SQLite."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from ingest.errors import QueryError
from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.reader import iter_log
from ingest.log.segments import RotationPolicy, list_segments
from ingest.log.writer import FsyncPolicy, LogWriter, events_dir
from ingest.simulator import Account, AccountSpec, DeliveryFactory
from projections import iter_rows, project
from projections.duckdb_views import VIEW_NAMES, open_analytics, run_query, view_statements
from tests.conftest import REPO_ROOT
from tests.projections.rule_cases import (
    STEP,
    Step,
    build_log,
    closed,
    encode,
    init,
    message,
    metadata,
    transcript,
    wait_until,
    write_segments,
)


def query(conn: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[Any, ...]]:
    return list(run_query(conn, sql).rows)


def conversation(writer: LogWriter, n: int, *, user_id: str | None = None, end: str | None = None) -> None:
    conn = f"conn-{n}"
    writer.append(Origin("agent_ws", "out", "agent_x", conn, None), inspect_frame(init(user_id)))
    writer.append(Origin("agent_ws", "in", "agent_x", conn, None), inspect_frame(metadata(f"conv_{n}")))
    got = Origin("agent_ws", "in", "agent_x", conn, f"conv_{n}")
    sent = Origin("agent_ws", "out", "agent_x", conn, f"conv_{n}")
    writer.append(got, inspect_frame('{"type":"ping","ping_event":{"event_id":1,"ping_ms":null}}'))
    said = '{"type":"user_transcript","user_transcription_event":{"user_transcript":"Ol\\u00e1, I need help","event_id":1}}'
    writer.append(got, inspect_frame(said))
    writer.append(got, inspect_frame(said))  # resent, byte for byte
    writer.append(
        got, inspect_frame('{"type":"agent_response","agent_response_event":{"agent_response":"Sure"}}')
    )
    writer.append(sent, inspect_frame(message("thanks")))
    writer.append(
        got, inspect_frame('{"type":"agent_response","agent_response_event":{"agent_response":"Bye"}}')
    )
    writer.append(got, inspect_frame("malformed {"))
    if end == "error":
        error = '{"type":"error","error_event":{"code":1000,"error_type":"max_duration_exceeded","message":"late"}}'
        writer.append(got, inspect_frame(error))
    elif end == "end_call":
        tool = (
            '{"type":"agent_tool_response","agent_tool_response":{"tool_name":"end_call","is_error":false}}'
        )
        writer.append(got, inspect_frame(tool))


def sample_log(data_dir: Path, max_bytes: int = 2048) -> None:
    with LogWriter.open(data_dir, fsync=FsyncPolicy.NEVER, rotation=RotationPolicy(max_bytes=max_bytes)) as w:
        conversation(w, 1, user_id="user-1", end="error")
        conversation(w, 2, end="end_call")
        conversation(w, 3)


def test_the_four_views_answer(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sample_log(data_dir)
    conn = open_analytics(data_dir)
    try:
        tables = {row[0] for row in query(conn, "SELECT view_name FROM duckdb_views() WHERE NOT internal")}
        assert set(VIEW_NAMES) <= tables
        assert query(
            conn, "SELECT count(*), count(DISTINCT segment) > 1, min(seq), max(seq) FROM events"
        ) == [(29, True, 1, 29)]
        columns = [row[0] for row in query(conn, "DESCRIBE events")]
        assert columns[:8] == [
            "seq",
            "received_at",
            "source",
            "direction",
            "agent_id",
            "connection_id",
            "conversation_id",
            "type",
        ]
        assert query(conn, "SELECT DISTINCT source FROM events") == [("agent_ws",)]
        assert query(conn, "SELECT count(*) FROM events WHERE raw IS NOT NULL") == [(3,)]
        rows = query(conn, "SELECT session_id, user_id, kind, text FROM user_texts ORDER BY id")
        assert rows == [
            ("conv_1", "user-1", "user_transcript", "Olá, I need help"),
            ("conv_1", "user-1", "user_message", "thanks"),
            ("conv_2", "eleven_user", "user_transcript", "Olá, I need help"),
            ("conv_2", "eleven_user", "user_message", "thanks"),
            ("conv_3", "eleven_user", "user_transcript", "Olá, I need help"),
            ("conv_3", "eleven_user", "user_message", "thanks"),
        ]
        conversations = query(
            conn,
            "SELECT conversation_id, agent_id, user_turns, agent_turns, events, ended_by, end_error_type,"
            " end_error_code, duration >= INTERVAL 0 SECOND, first_event_at <= last_event_at"
            " FROM conversations ORDER BY conversation_id",
        )
        assert conversations == [
            ("conv_1", "agent_x", 2, 2, 10, "error", "max_duration_exceeded", 1000, True, True),
            ("conv_2", "agent_x", 2, 2, 10, "agent_end_call", None, None, True, True),
            ("conv_3", "agent_x", 2, 2, 9, "no_end_event", None, None, True, True),
        ]
        daily = query(
            conn, "SELECT events, conversations, user_turns, users, agent_turns, errors FROM daily_activity"
        )
        assert daily == [(29, 3, 6, 2, 6, 1)]
    finally:
        conn.close()


def test_new_and_compressed_segments_show_up_without_recreating_anything(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sample_log(data_dir)
    conn = open_analytics(data_dir)
    try:
        assert query(conn, "SELECT count(*) FROM events") == [(29,)]
        with LogWriter.open(data_dir, fsync=FsyncPolicy.NEVER, rotation=RotationPolicy(max_bytes=1024)) as w:
            conversation(w, 4)
        assert query(conn, "SELECT count(*) FROM events") == [(38,)]
        closed = list_segments(events_dir(data_dir))[0]
        with closed.open("rb") as src, gzip.open(closed.with_name(closed.name + ".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
        closed.unlink()
        assert query(conn, "SELECT count(*), count(DISTINCT seq) FROM events") == [(38, 38)]
        assert query(conn, "SELECT count(*) FROM user_texts") == [(8,)]
        if shutil.which("zstd"):
            second = [p for p in list_segments(events_dir(data_dir)) if p.suffix == ".jsonl"][0]
            subprocess.run(["zstd", "-q", "--rm", str(second)], check=True)
            assert query(conn, "SELECT count(*), count(DISTINCT seq) FROM events") == [(38, 38)]
    finally:
        conn.close()


def test_an_empty_data_dir_gives_empty_views(tmp_path: Path) -> None:
    conn = open_analytics(tmp_path / "fresh")
    try:
        for view in VIEW_NAMES:
            assert query(conn, f"SELECT count(*) FROM {view}") == [(0,)]
    finally:
        conn.close()


def test_moving_the_data_dir_keeps_the_views_working(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sample_log(data_dir)
    open_analytics(data_dir).close()
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(data_dir, moved)
    before = (moved / "analytics.duckdb").stat().st_mtime_ns
    conn = open_analytics(moved)
    try:
        assert query(conn, "SELECT count(*) FROM events") == [(29,)]
    finally:
        conn.close()
    assert (moved / "analytics.duckdb").stat().st_mtime_ns == before  # nothing had to be recreated
    # Plain DuckDB works too, from the data dir or with file_search_path.
    plain = duckdb.connect(str(moved / "analytics.duckdb"), read_only=True)
    plain.execute(f"SET file_search_path = '{moved}'")
    assert plain.execute("SELECT count(*) FROM user_texts").fetchone() == (6,)
    plain.close()


def test_a_duckdb_file_outside_the_data_dir_follows_a_move(tmp_path: Path) -> None:
    data_dir, analytics = tmp_path / "data", tmp_path / "analytics" / "a.duckdb"
    sample_log(data_dir)
    open_analytics(data_dir, analytics).close()
    shutil.move(data_dir, tmp_path / "data2")
    conn = open_analytics(tmp_path / "data2", analytics)
    try:
        assert query(conn, "SELECT count(*) FROM events") == [(29,)]
    finally:
        conn.close()


def test_a_torn_tail_and_torn_sidecars_are_ignored(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sample_log(data_dir)
    active = list_segments(events_dir(data_dir))[-1]
    with active.open("ab") as f:
        f.write(b'{"seq":30,"received_at":"2026-11-25T12:00:00.000000Z","source":"agent_ws","dir')
    sidecar = active.with_name(active.name + ".torn-20261125T120000Z")
    sidecar.write_bytes(active.read_bytes().splitlines(keepends=True)[0])
    conn = open_analytics(data_dir)
    try:
        assert query(conn, "SELECT count(*), max(seq) FROM events") == [(29, 29)]
        assert query(conn, "SELECT count(*) FROM user_texts") == [(6,)]
    finally:
        conn.close()


def _compare(data_dir: Path) -> None:
    project(data_dir, data_dir / "user.db")
    sqlite_rows = list(iter_rows(data_dir / "user.db"))
    conn = open_analytics(data_dir)
    try:
        duck_rows = query(conn, "SELECT * FROM user_texts ORDER BY id")
        columns = [row[0] for row in query(conn, "DESCRIBE user_texts")]
    finally:
        conn.close()
    assert columns == [
        "id",
        "dedup_key",
        "kind",
        "session_id",
        "user_id",
        "text",
        "timestamp",
        "metadata",
        "sources",
        "seq",
    ]
    assert sqlite_rows and duck_rows == sqlite_rows


def test_sqlite_and_duckdb_agree_on_a_real_session_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sample_log(data_dir, max_bytes=700)
    _compare(data_dir)


def mixed_log(data_dir: Path) -> list[tuple[str, str, int]]:
    """Every source over the simulator's conversations, as the real sources log them.

    A monitored conversation (whose typed turns the monitor shows as
    transcripts), one held on the agent socket (transcripts in, typed text
    out), REST bodies of every conversation (compact, escaped, pretty) and
    webhooks for some (compact and pretty, one delivered twice, one of
    another type). Returns each user turn as (conversation, text, n-th time
    that text in that conversation).
    """
    account = Account(
        AccountSpec(conversations=6, processing=0, failed_every=0, escaped_every=3, pretty_every=4)
    )
    factory = DeliveryFactory("wsec_test", seed=1)
    turns: list[tuple[str, str, int]] = []
    with LogWriter.open(data_dir, fsync=FsyncPolicy.NEVER, rotation=RotationPolicy(max_bytes=8192)) as writer:
        conversations = account.of_agent("agent_demo")
        for conversation in conversations:
            said: Counter[str] = Counter()
            for entry in conversation.user_entries():
                said[entry["message"]] += 1
                turns.append((conversation.conversation_id, entry["message"], said[entry["message"]]))
        watched, held = conversations[0], conversations[1]
        monitor = Origin("monitor", "in", "agent_demo", "mon-1", watched.conversation_id)
        for entry in watched.user_entries():
            writer.append(monitor, inspect_frame(transcript(entry["message"], entry["source_event_id"])))
        live_in = Origin("agent_ws", "in", "agent_demo", "ws-1", held.conversation_id)
        live_out = Origin("agent_ws", "out", "agent_demo", "ws-1", held.conversation_id)
        writer.append(
            Origin("agent_ws", "out", "agent_demo", "ws-1", None), inspect_frame(init(held.user_id))
        )
        for entry in held.user_entries():
            if entry["source_medium"] == "text":
                writer.append(live_out, inspect_frame(message(entry["message"])))
            else:
                writer.append(live_in, inspect_frame(transcript(entry["message"], entry["source_event_id"])))
        writer.append(
            Origin("capture", "in", "agent_demo", "ws-1", held.conversation_id), inspect_frame(closed())
        )
        for n, conversation in enumerate(conversations):
            rest = Origin("rest", "in", "agent_demo", None, conversation.conversation_id)
            writer.append(rest, inspect_frame(account.body(conversation.conversation_id).decode()))
            if n % 2:
                data = orjson.loads(account.body(conversation.conversation_id))
                delivery = factory.transcription(data=data, encoding="pretty" if n == 3 else None)
                hook = Origin("webhook", "in", "agent_demo", f"hook-{n}", conversation.conversation_id)
                for _ in range(2 if n == 1 else 1):  # a delivery received twice
                    writer.append(hook, inspect_frame(delivery.body.decode()))
        failure = factory.initiation_failure()
        writer.append(
            Origin("webhook", "in", "agent_demo", "hook-f", failure.conversation_id),
            inspect_frame(failure.body.decode()),
        )
    return turns


def test_every_source_gives_one_row_per_turn_and_both_stores_agree(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    turns = mixed_log(data_dir)
    assert {line.source for line in iter_log(events_dir(data_dir))} == {
        "agent_ws",
        "monitor",
        "rest",
        "webhook",
        "capture",
    }
    assert any("raw" in line.envelope for line in iter_log(events_dir(data_dir)) if line.source == "webhook")
    _compare(data_dir)
    rows = list(iter_rows(data_dir / "user.db"))
    seen: Counter[tuple[str, str]] = Counter()
    found = []
    for row in rows:
        seen[row[3], row[5]] += 1
        found.append((row[3], row[5], seen[row[3], row[5]]))
    assert sorted(found) == sorted(turns)
    sources = Counter(row[8] for row in rows)
    assert sources['["monitor","rest"]'] > 0 and sources['["agent_ws","rest","webhook"]'] > 0
    assert sources['["rest","webhook"]'] > 0 and sources['["rest"]'] > 0
    conn = open_analytics(data_dir)
    try:
        assert query(conn, "SELECT count(*) FROM user_texts") == [(len(turns),)]
        logged_by = {tuple(orjson.loads(row[0])) for row in query(conn, "SELECT sources FROM conversations")}
        assert {("agent_ws", "capture", "rest", "webhook"), ("monitor", "rest"), ("rest",)} <= logged_by
        assert query(conn, "SELECT DISTINCT source FROM events ORDER BY source") == [
            ("agent_ws",),
            ("capture",),
            ("monitor",),
            ("rest",),
            ("webhook",),
        ]
    finally:
        conn.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEP, min_size=30, max_size=150))
def test_sqlite_and_duckdb_agree_row_for_row(tmp_path: Path, read_path: str, steps: list[Step]) -> None:
    """Property: the same log gives the same rows, column for column, in both (the views' SQL as built)."""
    data_dir = tmp_path / os.urandom(6).hex()
    write_segments(data_dir, [b"".join(build_log(steps))], [1])
    project(data_dir, data_dir / "user.db")
    rows = list(iter_rows(data_dir / "user.db"))
    assume(rows)  # so that the two stores compared have rows
    placeholder = data_dir / "empty.jsonl"
    placeholder.touch()
    conn = duckdb.connect()
    try:
        for statement in view_statements(events_dir(data_dir).as_posix(), placeholder.as_posix()):
            conn.execute(statement)
        assert query(conn, "SELECT * FROM user_texts ORDER BY id") == rows
    finally:
        conn.close()


def test_a_turn_logged_without_a_direction_is_in_neither_store(tmp_path: Path) -> None:
    """The rule reads a frame type per source and direction: no direction, no row (a line not as the writer writes it)."""
    data_dir = tmp_path / "data"
    lines = [
        encode(1, message("typed"), direction=None, source="monitor"),  # type: ignore[arg-type]
        encode(2, transcript("spoken"), direction=None),  # type: ignore[arg-type]
        encode(3, transcript("heard")),
    ]
    write_segments(data_dir, [b"".join(lines)], [1])
    report = project(data_dir, data_dir / "user.db")
    assert report.rows_written == 1 and not report.skipped
    conn = open_analytics(data_dir)
    try:
        assert query(conn, "SELECT text FROM user_texts") == [("heard",)]
    finally:
        conn.close()


def test_querying_while_a_writer_appends(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sample_log(data_dir)
    script = (
        "import sys, time; from pathlib import Path\n"
        "from ingest.log.writer import FsyncPolicy, LogWriter\n"
        "from ingest.log.segments import RotationPolicy\n"
        "from tests.projections.test_duckdb_views import conversation\n"
        f"w = LogWriter.open(Path({str(data_dir)!r}), fsync=FsyncPolicy.NEVER, rotation=RotationPolicy(max_bytes=8192))\n"
        "for n in range(100, 100_000):\n"
        "    conversation(w, n)\n"
        "    time.sleep(0.002)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT)
    conn = open_analytics(data_dir)
    counts: list[int] = []
    try:
        wait_until(lambda: query(conn, "SELECT count(*) FROM events")[0][0] > 29, 20, "the writer to start")
        while len(counts) < 10:
            assert writer.poll() is None, "the writer stopped before the queries were done"
            events, turns = query(
                conn, "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM user_texts)"
            )[0]
            counts.append(events)
            assert turns <= events
    finally:
        writer.kill()
        writer.wait()
        conn.close()
    assert counts == sorted(counts) and counts[-1] > counts[0]


def test_a_bad_statement_raises_query_error_with_duckdbs_message(tmp_path: Path) -> None:
    conn = open_analytics(tmp_path / "data")
    try:
        with pytest.raises(QueryError, match="nope"):
            run_query(conn, "SELECT * FROM nope")
        with pytest.raises(QueryError, match="syntax error"):
            run_query(conn, "SELEC 1")
        assert run_query(conn, "SELECT 1 AS one").columns == ["one"]
    finally:
        conn.close()


def test_two_readers_at_once(tmp_path: Path) -> None:
    """Read-only connections let several `capture sql` run together."""
    data_dir = tmp_path / "data"
    sample_log(data_dir)
    open_analytics(data_dir).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from projections.duckdb_views import open_analytics\n"
            f"c = open_analytics(Path({str(data_dir)!r})); print('open', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        conn = open_analytics(data_dir)
        assert query(conn, "SELECT count(*) FROM events") == [(29,)]
        conn.close()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
