"""The SQLite store: the store contract, and what only a file has (WAL, swaps, versions, foreign tables, kill -9)."""

from __future__ import annotations

import gzip
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ingest.errors import LogError, ProjectionError
from ingest.log.segments import segment_name
from ingest.log.writer import events_dir
from projections.reader import log_last_seq
from projections.rule import fold
from projections.runner import project, rebuild
from projections.sqlite import SCHEMA_VERSION, UserTextStore, projection_status, rebuild_into
from projections.store import Store
from tests.conftest import TIMEOUT_FACTOR
from tests.projections.conftest import BIG_LINES
from tests.projections.rule_cases import (
    dump,
    encode,
    kill,
    message,
    run_in_child,
    small_log,
    state_row,
    wait_until,
    write_segments,
)
from tests.projections.store_contract import StoreContract, lines


POSIX_ONLY = pytest.mark.skipif(os.name == "nt", reason="SIGKILL")


class TestUserTextStore(StoreContract):
    def open_store(self, where: Path) -> Store:
        return UserTextStore.open(where)

    def rebuild_into(self, where: Path, fill: Callable[[Store], None]) -> str:
        return rebuild_into(where, fill)

    def stored_rows(self, where: Path) -> list[tuple[Any, ...]]:
        return dump(where) if where.exists() else []


def test_the_database_is_in_wal_mode(tmp_path: Path) -> None:
    UserTextStore.open(tmp_path / "db").close()
    conn = sqlite3.connect(tmp_path / "db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_store_whose_file_was_replaced_writes_nothing_more_there(tmp_path: Path) -> None:
    """A store open on a file deleted (or renamed over) refuses the batch and reopens the file now there."""
    db = tmp_path / "db"
    with UserTextStore.open(db) as old:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        with UserTextStore.open(db) as new:
            assert new.apply(fold(new.state, lines()[:2], new), 0) == 1
        assert old.apply(fold(old.state, lines()[:3], old), 0) is None
        old.reload()
        assert old.last_seq == 2
    assert [row[-1] for row in dump(db)] == [2]


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


def test_a_failed_rebuild_keeps_the_old_table_and_gives_the_space_back(
    tmp_path: Path, read_path: str
) -> None:
    """A segment that cannot be read: one clear error, the old table as it was, no scratch file left."""
    data_dir = tmp_path / "data"
    small_log(data_dir)
    db = tmp_path / "user.db"
    rebuild(data_dir, db)
    table = dump(db)
    truncated = gzip.compress(encode(10_000, message("late"), direction="out") * 50)[:-12]
    (events_dir(data_dir) / (segment_name(10_000) + ".gz")).write_bytes(truncated)
    with pytest.raises(LogError, match=r"cannot read .*00000000000000010000\.jsonl\.gz"):
        rebuild(data_dir, db)
    assert dump(db) == table
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("user.db.rebuild")]


def test_a_failed_swap_keeps_the_old_table_and_gives_the_space_back(tmp_path: Path) -> None:
    """The build succeeds, the swap fails (SQLite refuses the copy): no scratch file is left."""
    data_dir, db = tmp_path / "data", tmp_path / "user.db"
    small_log(data_dir)
    rebuild(data_dir, db)
    table = dump(db)

    def build_then_change_the_page_size(store: UserTextStore) -> None:
        # While the rebuild ran, the live file got another page size: the
        # backup API cannot copy into a WAL database of another page size.
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA page_size=8192")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()

    with pytest.raises(ProjectionError, match="cannot swap the rebuilt table into"):
        rebuild_into(db, build_then_change_the_page_size)
    assert dump(db) == table
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("user.db.rebuild")]


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
    with pytest.raises(
        ProjectionError, match=rf"older capture \(schema 1, now {SCHEMA_VERSION}\); run `capture rebuild`"
    ):
        project(data_dir, db)
    assert rebuild(data_dir, db).rows_written == 6


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
    child = run_in_child(
        "from pathlib import Path; from projections import rebuild; "
        f"rebuild(Path({str(data_dir)!r}), Path({str(db)!r}), batch_lines=100)"
    )
    wait_until(
        lambda: scratch.exists() and scratch.stat().st_size > 256 * 1024, 30 * TIMEOUT_FACTOR, "rebuild"
    )
    kill(child)
    assert dump(db) == old
    assert UserTextStore.open(db).last_seq == 2
    report = rebuild(data_dir, db)
    assert report.swap == "copied" and report.last_seq == BIG_LINES
    assert dump(db) == expected
    assert not scratch.exists()
