"""The SQLite user_texts table: idempotence, bad input, kill -9, atomic rebuild, schema versions."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ingest.errors import LogError, ProjectionError
from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.segments import RotationPolicy, segment_name
from ingest.log.writer import FsyncPolicy, LogWriter, events_dir
from projections.rule import FoldState, Gap, fold, typed_key
from projections.sqlite import (
    SCHEMA_VERSION,
    UserTextStore,
    iter_rows,
    log_last_seq,
    project,
    projection_status,
    rebuild,
)
from tests.conftest import TIMEOUT_FACTOR
from tests.projections.rule_cases import (
    STEP,
    Step,
    build_log,
    closed,
    conversation_body,
    encode,
    init,
    message,
    metadata,
    reference,
    transcript,
    user_entry,
    wait_until,
    write_segments,
)


POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")


def dump(db: Path) -> list[tuple[Any, ...]]:
    return list(iter_rows(db))


def state_row(db: Path) -> tuple[Any, ...]:
    conn = sqlite3.connect(db)
    try:
        return tuple(conn.execute("SELECT last_seq, lines, rows, skipped FROM projection_state").fetchone())
    finally:
        conn.close()


def small_log(data_dir: Path) -> None:
    """Two conversations, a resend, a blank, rotation across three segments."""
    with LogWriter.open(data_dir, fsync=FsyncPolicy.NEVER, rotation=RotationPolicy(max_bytes=600)) as writer:
        for n, user in ((1, "user-1"), (2, None)):
            conn = f"conn-{n}"
            out = Origin("agent_ws", "out", "agent_x", conn, None)
            writer.append(out, inspect_frame(init(user)))
            writer.append(
                Origin("agent_ws", "in", "agent_x", conn, None), inspect_frame(metadata(f"conv_{n}"))
            )
            got = Origin("agent_ws", "in", "agent_x", conn, f"conv_{n}")
            sent = Origin("agent_ws", "out", "agent_x", conn, f"conv_{n}")
            writer.append(got, inspect_frame(transcript("I need help", 1)))
            writer.append(got, inspect_frame(transcript("I need help", 1)))  # resent
            writer.append(
                got, inspect_frame('{"type":"agent_response","agent_response_event":{"agent_response":"ok"}}')
            )
            writer.append(sent, inspect_frame(message("yes")))
            writer.append(sent, inspect_frame(message("yes")))
            writer.append(sent, inspect_frame(message(" ")))


def test_project_twice_gives_the_same_table(tmp_path: Path) -> None:
    data_dir, db = tmp_path / "data", tmp_path / "user.db"
    small_log(data_dir)
    assert len(list(events_dir(data_dir).iterdir())) >= 3
    first = project(data_dir, db)
    assert (first.lines_read, first.rows_written) == (16, 6)
    assert first.skipped == {"duplicate_turn": 2, "empty_text": 2}
    table = dump(db)
    again = project(data_dir, db)
    assert (again.lines_read, again.rows_written, again.last_seq) == (0, 0, 16)
    assert dump(db) == table
    assert [row[4] for row in table] == ["user-1"] * 3 + ["eleven_user"] * 3
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_rebuild_twice_gives_the_same_table_as_project(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    small_log(data_dir)
    project(data_dir, tmp_path / "projected.db")
    first = rebuild(data_dir, tmp_path / "rebuilt.db")
    assert first.swap == "renamed"
    table = dump(tmp_path / "rebuilt.db")
    second = rebuild(data_dir, tmp_path / "rebuilt.db")
    assert second.swap == "copied"
    assert (second.lines_read, second.rows_written) == (16, 6)
    assert dump(tmp_path / "rebuilt.db") == table == dump(tmp_path / "projected.db")
    assert state_row(tmp_path / "rebuilt.db") == state_row(tmp_path / "projected.db")
    assert not (tmp_path / "rebuilt.db.rebuild").exists()


@pytest.mark.parametrize("read_ahead", [False, True])
def test_a_failed_rebuild_keeps_the_old_table_and_gives_the_space_back(
    tmp_path: Path, read_ahead: bool
) -> None:
    """A segment that cannot be read: one clear error, the old table as it was, no scratch file left."""
    data_dir = tmp_path / "data"
    small_log(data_dir)
    db = tmp_path / "user.db"
    rebuild(data_dir, db)
    table = dump(db)
    (events_dir(data_dir) / (segment_name(10_000) + ".zst")).write_bytes(b"not zstd")
    with pytest.raises(LogError, match="zstandard"):
        rebuild(data_dir, db, read_ahead=read_ahead)
    assert dump(db) == table
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("user.db.rebuild")]


def test_duplicated_lines_and_a_resent_transcript_give_one_row(tmp_path: Path) -> None:
    lines = [encode(1, transcript("hi", 1)), encode(2, message("yes"), direction="out")]
    data = b"".join(lines) + lines[1] + lines[0] + encode(3, transcript("hi", 1))
    write_segments(tmp_path, [data], [1])
    report = project(tmp_path, tmp_path / "db")
    assert report.rows_written == 2
    assert report.skipped == {"duplicate_line": 2, "duplicate_turn": 1}
    assert [row[-1] for row in dump(tmp_path / "db")] == [1, 2]


def test_a_torn_last_line_waits_and_a_torn_closed_segment_is_counted(tmp_path: Path) -> None:
    first = encode(1, message("a"), direction="out") + encode(2, message("b"), direction="out")[:30]
    torn = encode(3, message("c"), direction="out")
    write_segments(tmp_path, [first, torn[:25]], [1, 3])
    report = project(tmp_path, tmp_path / "db")
    assert report.partial_tail and report.last_seq == 1
    assert report.skipped == {"invalid_line": 1}
    assert report.gaps == []
    # The writer finishes the line: the next run applies it and reports the lost seq 2.
    with (events_dir(tmp_path) / segment_name(3)).open("ab") as f:
        f.write(torn[25:])
    report = project(tmp_path, tmp_path / "db")
    assert not report.partial_tail and report.rows_written == 1 and report.last_seq == 3
    assert report.gaps == [Gap(1, 3)]


def test_invalid_lines_are_counted_never_fatal(tmp_path: Path) -> None:
    bad_crc = encode(2, message("b"), direction="out").replace(b'"text":"b"', b'"text":"B"')
    data = b"".join(
        [
            encode(1, message("a"), direction="out"),
            b"this is not json\n",
            bad_crc,
            b'{"seq":"x"}\n',
            encode(3, transcript(None)),
            encode(4, "not json at all {"),
            encode(5, message("e"), direction="out"),
        ]
    )
    write_segments(tmp_path, [data], [1])
    report = project(tmp_path, tmp_path / "db")
    assert report.rows_written == 2
    assert report.skipped == {"invalid_line": 3, "no_text": 1}
    assert orjson.loads(state_row(tmp_path / "db")[3]) == {"invalid_line": 3, "no_text": 1}


def test_a_gap_in_seq_is_reported_and_kept(tmp_path: Path) -> None:
    data = b"".join(encode(s, message(str(s)), direction="out") for s in (1, 2, 5, 6, 9))
    write_segments(tmp_path, [data], [1])
    report = project(tmp_path, tmp_path / "db")
    assert report.gaps == [Gap(2, 5), Gap(6, 9)]
    assert report.rows_written == 5
    status = projection_status(tmp_path, tmp_path / "db")
    assert status["gaps"] == 2 and status["lag_lines"] == 0 and status["last_projected_seq"] == 9


def test_projection_status_shows_lag(tmp_path: Path) -> None:
    data = b"".join(encode(s, message(str(s)), direction="out") for s in range(1, 11))
    write_segments(tmp_path, [data[: len(data) // 2]], [1])
    project(tmp_path, tmp_path / "db")
    write_segments(tmp_path, [data], [1])
    with (events_dir(tmp_path) / segment_name(1)).open("ab") as f:
        f.write(b'{"seq":11,"rec')  # a line being written is not counted
    status = projection_status(tmp_path, tmp_path / "db")
    assert status["log_last_seq"] == 10 and status["lag_lines"] == 10 - status["last_projected_seq"] > 0
    assert log_last_seq(tmp_path) == 10
    missing = projection_status(tmp_path, tmp_path / "nope.db")
    assert missing["exists"] is False and missing["lag_lines"] == 10


def test_two_projectors_never_interleave_batches(tmp_path: Path) -> None:
    """A batch folded from a stale position is refused; the loser reloads."""
    from ingest.log.envelope import decode_line

    lines = [decode_line(encode(s, message(str(s)), direction="out")) for s in (1, 2, 3)]
    db = tmp_path / "db"
    with UserTextStore.open(db) as one, UserTextStore.open(db) as two:
        assert one.apply(fold(FoldState(), lines[:2], one), 0) == 2
        assert two.apply(fold(FoldState(), lines, two), 0) is None
        two.reload()
        assert two.last_seq == 2
        assert two.apply(fold(two.state.copy(), lines[2:], two), 2) == 1
    assert [row[-1] for row in dump(db)] == [1, 2, 3]


def test_a_reader_sees_the_old_table_or_the_new_one(tmp_path: Path) -> None:
    data_dir, db = tmp_path / "data", tmp_path / "db"
    small_log(data_dir)
    project(data_dir, db)
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM user_texts WHERE seq > 5")  # pretend the old table differs
    conn.commit()
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    before = reader.execute("SELECT count(*) FROM user_texts").fetchone()[0]
    report = rebuild(data_dir, db)
    assert report.swap == "copied"
    assert reader.execute("SELECT count(*) FROM user_texts").fetchone()[0] == before  # its snapshot
    reader.execute("COMMIT")
    assert reader.execute("SELECT count(*) FROM user_texts").fetchone()[0] == 6
    reader.close()
    conn.close()


def test_schema_versions(tmp_path: Path) -> None:
    data_dir, db = tmp_path / "data", tmp_path / "db"
    small_log(data_dir)
    project(data_dir, db)

    def set_version(version: int) -> None:
        conn = sqlite3.connect(db)
        conn.execute("UPDATE projection_state SET schema_version = ?", (version,))
        conn.commit()
        conn.close()

    set_version(SCHEMA_VERSION + 1)
    with pytest.raises(ProjectionError, match="newer capture.*capture rebuild"):
        project(data_dir, db)
    set_version(SCHEMA_VERSION - 1)
    with pytest.raises(ProjectionError, match="older capture.*run `capture rebuild`"):
        UserTextStore.open(db)
    rebuild(data_dir, db)
    assert project(data_dir, db).last_seq == 16
    assert projection_status(data_dir, db)["schema_version"] == SCHEMA_VERSION


def test_tables_capture_did_not_make_are_never_replaced(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    small_log(data_dir)
    shared = tmp_path / "shared.db"
    conn = sqlite3.connect(shared)
    conn.execute("CREATE TABLE contacts (name TEXT)")
    conn.commit()
    conn.close()
    assert project(data_dir, shared).rows_written == 6  # living next to other tables is fine
    with pytest.raises(ProjectionError, match="contacts"):
        rebuild(data_dir, shared)
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE user_texts (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ProjectionError, match="did not create"):
        project(data_dir, foreign)
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ProjectionError, match="junk.db"):
        project(data_dir, tmp_path / "junk.db")


def test_a_version_1_database_needs_a_rebuild(tmp_path: Path) -> None:
    """Schema 2 merges sightings across sources: version-1 rows cannot be converted in place."""
    data_dir, db = tmp_path / "data", tmp_path / "db"
    small_log(data_dir)
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE user_texts (id INTEGER PRIMARY KEY, dedup_key TEXT UNIQUE)")
    conn.execute(
        "CREATE TABLE projection_state (id INTEGER PRIMARY KEY, schema_version INTEGER, last_seq INTEGER,"
        " lines INTEGER, rows INTEGER, skipped TEXT, updated_at TEXT)"
    )
    conn.execute("INSERT INTO projection_state VALUES (1, 1, 0, 0, 0, '{}', NULL)")
    conn.commit()
    conn.close()
    with pytest.raises(ProjectionError, match=r"older capture \(schema 1, now 2\); run `capture rebuild`"):
        project(data_dir, db)
    assert rebuild(data_dir, db).rows_written == 6


def test_state_carries_over_between_runs_and_ends_with_the_connection(tmp_path: Path) -> None:
    """Typed-turn counts and init user ids persist with the position; a closed connection's are dropped."""
    db = tmp_path / "db"
    first = [
        encode(1, init("u-1"), direction="out", connection_id="A"),
        encode(2, message("yes"), direction="out", connection_id="A"),
    ]
    write_segments(tmp_path, [b"".join(first)], [1])
    project(tmp_path, db)
    with UserTextStore.open(db) as store:
        assert store.state.user_ids == {"A": "u-1"}
        assert store.state.typed == {"A": {("conv_1", "yes"): 1}}
    second = [
        encode(3, message("yes "), direction="out", connection_id="A"),
        encode(4, closed(), source="capture", connection_id="A"),
    ]
    write_segments(tmp_path, [b"".join(first + second)], [1])
    project(tmp_path, db)
    rows = dump(db)
    assert [(r[4], r[5]) for r in rows] == [("u-1", "yes"), ("u-1", "yes ")]  # occurrences 1 and 2
    assert rows[1][1] == typed_key("conv_1", "yes", 2)
    with UserTextStore.open(db) as store:
        assert store.state.user_ids == {} and store.state.typed == {}
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM projection_typed").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM projection_users").fetchone() == (0,)
    conn.close()


def test_an_alias_merges_rows_stored_by_earlier_batches(tmp_path: Path) -> None:
    """Rows of one turn stored apart are merged when a REST body ties them, one line at a time too."""
    body = conversation_body("conv_1", [user_entry("yes", 3, "text", 7), user_entry("hi", 4, "audio", 8)])
    lines = [
        encode(1, message("yes"), direction="out", connection_id="A"),
        encode(2, transcript("yes", 7), source="monitor", connection_id="m1"),
        encode(3, transcript("hi", 8), source="monitor", connection_id="m1"),
        encode(4, orjson.dumps(body).decode(), source="rest", connection_id=None),
        encode(5, transcript("yes", 7), source="monitor", connection_id="m2"),  # after the alias
    ]
    write_segments(tmp_path, [b"".join(lines)], [1])
    report = project(tmp_path, tmp_path / "db", batch_lines=1)
    assert report.rows_written == 2 and report.skipped == {"duplicate_turn": 3}
    rows = dump(tmp_path / "db")
    assert [(r[0], r[2], r[8]) for r in rows] == [
        (1_000_000, "user_message", '["agent_ws","monitor","rest"]'),
        (3_000_000, "user_transcript", '["monitor","rest"]'),
    ]
    assert rows == [tuple(r) for r in reference(lines).rows]
    assert state_row(tmp_path / "db")[2] == 2
    rebuild(tmp_path, tmp_path / "db2")
    assert dump(tmp_path / "db2") == rows


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEP, min_size=20, max_size=100), batch=st.integers(1, 7))
def test_any_log_projected_in_any_batch_size_equals_the_model(
    tmp_path: Path, steps: list[Step], batch: int
) -> None:
    raw = build_log(steps)
    case = tmp_path / os.urandom(6).hex()
    write_segments(case, [b"".join(raw)], [1])
    project(case, case / "db", batch_lines=batch)
    table = dump(case / "db")
    assert table == [tuple(row) for row in reference(raw).rows]
    rebuild(case, case / "db2", batch_lines=batch + 3)
    assert dump(case / "db2") == table


# --- kill -9 in the middle ----------------------------------------------------------------------

BIG_LINES = 60_000


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[Any, ...]]]:
    """A log big enough that projecting it takes a while in small batches, and its expected table."""
    data_dir = tmp_path_factory.mktemp("big") / "data"
    with LogWriter.open(
        data_dir, fsync=FsyncPolicy.NEVER, rotation=RotationPolicy(max_bytes=2 << 20)
    ) as writer:
        for n in range(BIG_LINES // 3):
            conv = f"conv_{n // 50}"
            got = Origin("agent_ws", "in", "agent_x", f"conn_{n // 50}", conv)
            sent = Origin("agent_ws", "out", "agent_x", f"conn_{n // 50}", conv)
            writer.append(got, inspect_frame(transcript(f"I said {n}", n % 50)))
            writer.append(sent, inspect_frame(message(f"typed {n}")))
            writer.append(got, inspect_frame('{"type":"vad_score","vad_score_event":{"vad_score":0.9}}'))
    expected = tmp_path_factory.mktemp("expected") / "db"
    project(data_dir, expected)
    return data_dir, dump(expected)


def _run_in_child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _projected_seq(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            return int(conn.execute("SELECT last_seq FROM projection_state").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _kill(child: subprocess.Popen[bytes]) -> None:
    assert child.poll() is None, "the child finished before it could be killed: make the log bigger"
    child.send_signal(signal.SIGKILL)
    child.wait(10)


@POSIX_ONLY
def test_kill_9_during_project_leaves_a_usable_db_and_a_rerun_completes(
    tmp_path: Path, big_log: tuple[Path, list[tuple[Any, ...]]]
) -> None:
    data_dir, expected = big_log
    db = tmp_path / "db"
    child = _run_in_child(
        "from pathlib import Path; from projections.sqlite import project; "
        f"project(Path({str(data_dir)!r}), Path({str(db)!r}), batch_lines=100)"
    )
    wait_until(lambda: 2_000 < _projected_seq(db), 30, "project to be under way")
    _kill(child)
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    last_seq, rows = conn.execute("SELECT last_seq, rows FROM projection_state").fetchone()
    conn.close()
    assert 0 < last_seq < BIG_LINES
    # The rows are exactly those of the lines up to the stored position.
    assert dump(db) == [row for row in expected if row[-1] <= last_seq]
    assert rows == len(dump(db))
    report = project(data_dir, db)
    assert report.last_seq == BIG_LINES
    assert dump(db) == expected


@POSIX_ONLY
def test_kill_9_during_rebuild_leaves_the_old_table_and_a_rerun_completes(
    tmp_path: Path, big_log: tuple[Path, list[tuple[Any, ...]]]
) -> None:
    data_dir, expected = big_log
    db = tmp_path / "db"
    write_segments(
        tmp_path / "old", [b"".join(encode(s, message("old"), direction="out") for s in (1, 2))], [1]
    )
    project(tmp_path / "old", db)
    old = dump(db)
    scratch = tmp_path / "db.rebuild"
    child = _run_in_child(
        "from pathlib import Path; from projections.sqlite import rebuild; "
        f"rebuild(Path({str(data_dir)!r}), Path({str(db)!r}), batch_lines=100)"
    )
    wait_until(
        lambda: scratch.exists() and scratch.stat().st_size > 256 * 1024, 30 * TIMEOUT_FACTOR, "rebuild"
    )
    _kill(child)
    assert dump(db) == old
    assert UserTextStore.open(db).last_seq == 2
    report = rebuild(data_dir, db)
    assert report.swap == "copied" and report.last_seq == BIG_LINES
    assert dump(db) == expected
    assert not scratch.exists()
