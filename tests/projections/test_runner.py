"""The projection loop: project, rebuild and follow fold the log the same way, batch by batch, from any position."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from ingest.log.segments import segment_name
from ingest.log.writer import events_dir
from projections.rule import Gap, typed_key
from projections.runner import follow, project, rebuild
from projections.sqlite import UserTextStore, projection_status
from tests.conftest import TIMEOUT_FACTOR
from tests.projections.conftest import BIG_LINES
from tests.projections.rule_cases import (
    STEP,
    Step,
    build_log,
    closed,
    conversation_body,
    dump,
    encode,
    init,
    kill,
    message,
    projected_seq,
    reference,
    run_in_child,
    small_log,
    state_row,
    transcript,
    user_entry,
    wait_until,
    write_segments,
)


POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="SIGKILL")


def test_project_twice_gives_the_same_table(tmp_path: Path, read_path: str) -> None:
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


def test_duplicated_lines_and_a_resent_transcript_give_one_row(tmp_path: Path, read_path: str) -> None:
    lines = [encode(1, transcript("hi", 1)), encode(2, message("yes"), direction="out")]
    data = b"".join(lines) + lines[1] + lines[0] + encode(3, transcript("hi", 1))
    write_segments(tmp_path, [data], [1])
    report = project(tmp_path, tmp_path / "db")
    assert report.rows_written == 2
    assert report.skipped == {"duplicate_line": 2, "duplicate_turn": 1}
    assert [row[-1] for row in dump(tmp_path / "db")] == [1, 2]


def test_a_torn_last_line_waits_and_a_torn_closed_segment_is_counted(tmp_path: Path, read_path: str) -> None:
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


def test_invalid_lines_are_counted_never_fatal(tmp_path: Path, read_path: str) -> None:
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


def test_a_gap_in_seq_is_reported_and_kept(tmp_path: Path, read_path: str) -> None:
    data = b"".join(encode(s, message(str(s)), direction="out") for s in (1, 2, 5, 6, 9))
    write_segments(tmp_path, [data], [1])
    report = project(tmp_path, tmp_path / "db")
    assert report.gaps == [Gap(2, 5), Gap(6, 9)]
    assert report.rows_written == 5
    status = projection_status(tmp_path, tmp_path / "db")
    assert status["gaps"] == 2 and status["lag_lines"] == 0 and status["last_projected_seq"] == 9


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


def test_an_alias_merges_rows_stored_by_earlier_batches(tmp_path: Path, read_path: str) -> None:
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
    tmp_path: Path, read_path: str, steps: list[Step], batch: int
) -> None:
    raw = build_log(steps)
    expected = [tuple(row) for row in reference(raw).rows]
    assume(expected)  # so that the tables compared below have rows
    case = tmp_path / os.urandom(6).hex()
    write_segments(case, [b"".join(raw)], [1])
    project(case, case / "db", batch_lines=batch)
    table = dump(case / "db")
    assert table == expected
    rebuild(case, case / "db2", batch_lines=batch + 3)
    assert dump(case / "db2") == table


def test_a_frame_type_that_is_not_a_string_is_no_error(tmp_path: Path, read_path: str) -> None:
    """A frame whose type is a list or an object gives no row (it stopped the reader with a TypeError)."""
    lines = [
        encode(1, message("hi"), direction="out"),
        encode(2, '{"type":["user_message"],"text":"x"}', direction="out"),
        encode(3, '{"type":{"user_transcript":1}}'),
        encode(4, message("there"), direction="out"),
    ]
    write_segments(tmp_path, [b"".join(lines)], [1])
    report = project(tmp_path, tmp_path / "db")
    assert (report.lines_read, report.rows_written, report.skipped) == (4, 2, {})
    assert [row[5] for row in dump(tmp_path / "db")] == ["hi", "there"]


def _follow_until(data_dir: Path, db: Path, done: threading.Event) -> threading.Thread:
    thread = threading.Thread(
        target=follow, args=(data_dir, db, done.is_set), kwargs={"poll_interval": 0.005}
    )
    thread.start()
    return thread


def test_project_follow_and_rebuild_give_the_same_table(tmp_path: Path, read_path: str) -> None:
    """The three use one loop: from any position, with other projectors moving it, the same rows."""
    data_dir = tmp_path / "data"
    small_log(data_dir)
    project(data_dir, tmp_path / "projected.db")
    rebuild(data_dir, tmp_path / "rebuilt.db")
    done = threading.Event()
    follower = _follow_until(data_dir, tmp_path / "followed.db", done)
    wait_until(lambda: projected_seq(tmp_path / "followed.db") == 16, 10, "the follower to catch up")
    project(data_dir, tmp_path / "followed.db")  # nothing left to do: the follower was first
    done.set()
    follower.join(10 * TIMEOUT_FACTOR)
    assert not follower.is_alive()
    table = dump(tmp_path / "projected.db")
    assert len(table) == 6
    assert dump(tmp_path / "rebuilt.db") == table == dump(tmp_path / "followed.db")
    assert (
        state_row(tmp_path / "rebuilt.db")
        == state_row(tmp_path / "projected.db")
        == state_row(tmp_path / "followed.db")
    )


def test_the_follower_rereads_from_where_another_projector_left(tmp_path: Path) -> None:
    """project moves the position under the follower: it refuses its batch, reloads and goes on, nothing doubled."""
    data_dir, db = tmp_path / "data", tmp_path / "db"
    lines = [encode(s, message(f"m{s}"), direction="out") for s in range(1, 3001)]
    write_segments(data_dir, [b"".join(lines[:1000])], [1])
    done = threading.Event()
    follower = _follow_until(data_dir, db, done)
    try:
        wait_until(lambda: projected_seq(db) == 1000, 10, "the follower to catch up")
        write_segments(data_dir, [b"".join(lines)], [1])
        project(data_dir, db)
        wait_until(lambda: projected_seq(db) == 3000, 10, "the follower to see the end")
    finally:
        done.set()
        follower.join(10 * TIMEOUT_FACTOR)
    assert [row[5] for row in dump(db)] == [f"m{s}" for s in range(1, 3001)]
    with UserTextStore.open(db) as store:
        assert store.last_seq == 3000


@POSIX_ONLY
def test_kill_9_during_project_leaves_a_usable_db_and_a_rerun_completes(
    tmp_path: Path, big_log: tuple[Path, list[tuple[Any, ...]]]
) -> None:
    data_dir, expected = big_log
    db = tmp_path / "db"
    child = run_in_child(
        "from pathlib import Path; from projections import project; "
        f"project(Path({str(data_dir)!r}), Path({str(db)!r}), batch_lines=100)"
    )
    wait_until(lambda: 2_000 < projected_seq(db), 30, "project to be under way")
    kill(child)
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
