"""The live projection: a follower process that keeps user_texts up to date while a writer appends."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from ingest.errors import ProjectionError
from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.lock import probe_lock
from ingest.log.segments import RotationPolicy
from ingest.log.writer import FsyncPolicy, LogWriter
from projections import iter_rows, project, rebuild
from projections.follow import EXIT_GRACE, ORPHAN_DRAIN
from projections.live import NICENESS_STEP, live_projection_sidecar, projection_status, start_live_projection
from tests.conftest import TIMEOUT_FACTOR
from tests.projections.rule_cases import (
    conversation_body,
    dump,
    message,
    projected_seq,
    transcript,
    user_entry,
    wait_until,
)


SENT = Origin("agent_ws", "out", "agent_x", "conn-1", "conv_1")
GOT = Origin("agent_ws", "in", "agent_x", "conn-1", "conv_1")


def open_writer(data_dir: Path, max_bytes: int = 4096) -> LogWriter:
    return LogWriter.open(data_dir, fsync=FsyncPolicy.NEVER, rotation=RotationPolicy(max_bytes=max_bytes))


def test_rows_appear_while_the_writer_appends_across_rotation(tmp_path: Path) -> None:
    data_dir, db = tmp_path / "data", tmp_path / "data" / "whatsapp_storage.db"
    writer = open_writer(data_dir)
    live = start_live_projection(data_dir)
    try:
        assert probe_lock(data_dir) is not None and probe_lock(data_dir).pid == os.getpid()  # type: ignore[union-attr]
        for n in range(200):
            seq = writer.append(SENT, inspect_frame(message(f"m{n}")))
            if n % 50 == 0:

                def reached(target: int = seq) -> bool:
                    return projected_seq(db) >= target

                wait_until(reached, 10, f"seq {seq} to be projected")
        assert writer.stats.rotations > 3
    finally:
        writer.close()
        assert live.stop() == 0
    assert projected_seq(db) == 200
    assert [row[5] for row in iter_rows(db)] == [f"m{n}" for n in range(200)]
    status = projection_status(data_dir, db)
    assert status["lag_lines"] == 0 and status["rows"] == 200


def test_stop_applies_everything_the_log_holds(tmp_path: Path) -> None:
    data_dir, db = tmp_path / "data", tmp_path / "db"
    writer = open_writer(data_dir, max_bytes=64 * 1024)
    live = start_live_projection(data_dir, db)
    for n in range(5_000):
        writer.append(GOT, inspect_frame(transcript(f"t{n}", n)))
    writer.close()
    started = time.monotonic()
    assert live.stop() == 0
    assert time.monotonic() - started < 5
    assert projected_seq(db) == 5_000
    assert not live.running


def test_catches_up_from_the_stored_position_on_start(tmp_path: Path) -> None:
    data_dir, db = tmp_path / "data", tmp_path / "db"
    with open_writer(data_dir) as writer:
        for n in range(30):
            writer.append(SENT, inspect_frame(message(f"m{n}")))
    project(data_dir, db)
    with open_writer(data_dir) as writer:
        for n in range(30, 60):
            writer.append(SENT, inspect_frame(message(f"m{n}")))
        live = start_live_projection(data_dir, db)
        wait_until(lambda: projected_seq(db) == 60, 10, "the backlog to be applied")
    assert live.stop() == 0
    assert len(list(iter_rows(db))) == 60


def test_project_and_rebuild_while_live_converge(tmp_path: Path) -> None:
    """Other projectors move the position under the follower; it rereads and nothing is lost or doubled."""
    data_dir, db = tmp_path / "data", tmp_path / "db"
    writer = open_writer(data_dir, max_bytes=32 * 1024)
    live = start_live_projection(data_dir, db, poll_interval=0.005)
    try:
        for n in range(3_000):
            writer.append(SENT, inspect_frame(message(f"m{n}")))
            if n == 1_000:
                project(data_dir, db)
            if n == 2_000:
                assert rebuild(data_dir, db).swap == "copied"
    finally:
        writer.close()
        assert live.stop() == 0
    assert projected_seq(db) == 3_000
    rebuild(data_dir, tmp_path / "fresh.db")
    rows = list(iter_rows(db))
    assert len(rows) == 3_000 and rows == list(iter_rows(tmp_path / "fresh.db"))


def test_the_sidecar_hook_starts_and_stops_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    writer = open_writer(data_dir)
    stop = live_projection_sidecar(data_dir, None)(writer)
    writer.append(SENT, inspect_frame(message("hello")))
    writer.close()
    stop()
    assert [row[5] for row in iter_rows(data_dir / "whatsapp_storage.db")] == ["hello"]


def test_an_unusable_database_fails_at_start(tmp_path: Path) -> None:
    data_dir, db = tmp_path / "data", tmp_path / "db"
    project(data_dir, db)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE projection_state SET schema_version = 999")
    conn.commit()
    conn.close()
    with pytest.raises(ProjectionError, match="capture rebuild"):
        start_live_projection(data_dir, db)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_the_follower_ends_when_its_parent_dies(tmp_path: Path) -> None:
    """Its stdin closes with the parent: it applies what is there and exits (no orphan)."""
    data_dir, db = tmp_path / "data", tmp_path / "db"
    with open_writer(data_dir) as writer:
        writer.append(SENT, inspect_frame(message("hello")))
    parent = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; from pathlib import Path; from projections.live import start_live_projection; "
            f"p = start_live_projection(Path({str(data_dir)!r}), Path({str(db)!r})); "
            "print(p.pid, flush=True); os._exit(0)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(parent.stdout.split()[0])

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie until init reaps it: check its state.
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and stat.read_text().split(") ")[1].startswith("Z")

    wait_until(gone, 10, "the orphaned follower to exit")
    assert projected_seq(db) == 1


def _orphan(data_dir: Path, db: Path) -> tuple[subprocess.Popen[str], psutil.Process]:
    """A parent process that starts the follower and waits; and the follower, once exec'd."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from pathlib import Path; from projections.live import start_live_projection; "
            f"p = start_live_projection(Path({str(data_dir)!r}), Path({str(db)!r})); "
            "print(p.pid, flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    follower = psutil.Process(int(parent.stdout.readline()))
    wait_until(lambda: bool(follower.cmdline()), 10, "the follower to be exec'd")
    return parent, follower


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # an orphan's until init reaps it
    except psutil.NoSuchProcess:
        return True


#: How long a follower may outlive its parent: it goes on for ORPHAN_DRAIN, then its
#: watchdog ends it EXIT_GRACE later; one second more for the OS.
OUTLIVES = ORPHAN_DRAIN + EXIT_GRACE + 1.0


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_follower_stuck_on_a_busy_database_ends_soon_after_its_parent_is_killed(
    tmp_path: Path, big_log: tuple[Path, Any]
) -> None:
    """kill -9 of the ingest while its follower waits on the database: it still ends within seconds."""
    data_dir, db = big_log[0], tmp_path / "db"
    parent, follower = _orphan(data_dir, db)
    holder = sqlite3.connect(db, isolation_level=None, timeout=10)
    try:
        holder.execute(
            "BEGIN IMMEDIATE"
        )  # another writer holds the database: the follower's next batch waits
        killed = time.monotonic()
        parent.kill()
        parent.wait(10)
        wait_until(lambda: _gone(follower), OUTLIVES + 5, "the orphaned follower to end")
        assert time.monotonic() - killed < OUTLIVES * TIMEOUT_FACTOR
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        if not _gone(follower):
            follower.kill()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_follower_busy_catching_up_ends_soon_after_its_parent_is_killed(
    tmp_path: Path, big_log: tuple[Path, list[tuple[Any, ...]]]
) -> None:
    """kill -9 of the ingest while its follower catches up: it stops within seconds; what it stored is whole."""
    data_dir, expected = big_log
    db = tmp_path / "db"
    parent, follower = _orphan(data_dir, db)
    killed = time.monotonic()
    parent.kill()
    parent.wait(10)
    wait_until(lambda: _gone(follower), OUTLIVES + 5, "the orphaned follower to end")
    assert time.monotonic() - killed < OUTLIVES * TIMEOUT_FACTOR
    project(data_dir, db)
    assert dump(db) == expected


@pytest.mark.skipif(
    sys.platform == "win32", reason="POSIX priorities (Windows uses BELOW_NORMAL_PRIORITY_CLASS)"
)
def test_the_follower_runs_nicer_than_its_parent(tmp_path: Path) -> None:
    """A burst in capture ingest keeps the CPU; the follower catches up afterwards."""
    data_dir, db = tmp_path / "data", tmp_path / "db"
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS_STEP)
    writer = open_writer(data_dir)
    live = start_live_projection(data_dir, db)
    try:
        assert os.getpriority(os.PRIO_PROCESS, live.pid) == expected  # from its first instruction on
        # Niceness only weighs against processes of the same session (Linux
        # autogroups): same session, but its own process group (no Ctrl-C).
        assert os.getsid(live.pid) == os.getsid(0)
        assert os.getpgid(live.pid) == live.pid != os.getpgid(0)
        seq = writer.append(SENT, inspect_frame(message("hello")))
        wait_until(lambda: projected_seq(db) >= seq, 10, "the follower to run")
        assert os.getpriority(os.PRIO_PROCESS, live.pid) == expected  # and not lowered twice
    finally:
        writer.close()
        assert live.stop() == 0


def test_later_sources_update_rows_live(tmp_path: Path) -> None:
    """A turn seen live, then in a REST body: the follower merges it into the row it made."""
    data_dir, db = tmp_path / "data", tmp_path / "db"
    writer = open_writer(data_dir)
    live = start_live_projection(data_dir, db)
    try:
        seq = writer.append(GOT, inspect_frame(transcript("I need help", 2)))
        wait_until(lambda: projected_seq(db) >= seq, 10, "the live row")
        assert [row[8] for row in iter_rows(db)] == ['["agent_ws"]']
        body = conversation_body("conv_1", [user_entry("I need help", 3, "audio", 2)])
        rest = Origin("rest", "in", "agent_x", None, "conv_1")
        seq = writer.append(rest, inspect_frame(orjson.dumps(body).decode()))
        wait_until(lambda: projected_seq(db) >= seq, 10, "the REST body")
    finally:
        writer.close()
        assert live.stop() == 0
    [row] = iter_rows(db)
    assert row[8] == '["agent_ws","rest"]'


def test_the_follower_never_inherits_a_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A library caller who left the secrets in os.environ still starts a follower without them."""
    secrets = {
        "ELEVENLABS_API_KEY": "sk_never_in_a_child_0123",
        "ELEVENLABS_WEBHOOK_SECRET": "wsec_never_in_a_child_0123",
        "CAPTURE_RELAY_TOKEN": "relay_never_in_a_child_0123",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    data_dir = tmp_path / "data"
    with LogWriter.open(data_dir, command="test"):
        projection = start_live_projection(data_dir)
        try:
            process = psutil.Process(projection.pid)
            # /proc/<pid>/environ is the parent's until the child has exec'd.
            wait_until(lambda: "projections.follow" in process.cmdline(), 10, "the follower to start")
            child = process.environ()
        finally:
            projection.stop()
    assert child  # the follower's environment was read
    assert not set(secrets) & set(child)
    assert not set(secrets.values()) & set(child.values())
