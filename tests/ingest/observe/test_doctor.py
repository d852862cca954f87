"""The checks of `capture doctor`, each failure mode against the simulator and real files."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import sys
import time
from pathlib import Path

import orjson
import pytest

from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.lock import LOCK_NAME
from ingest.log.writer import LogWriter
from ingest.observe.doctor import (
    data_dir_checks,
    filesystem_type,
    lock_check,
    platform_checks,
    webhook_secret_check,
)
from ingest.observe.health import Check
from ingest.simulator import SimulatorThread
from projections.health import projection_check, views_check
from projections.runner import project


KEY = "sk_doctor"
ORIGIN = Origin("agent_ws", "in", "agent_demo", "c1", "conv_1")


def ask(sim_url: str, agent: str | None, key: str, **kwargs: object) -> dict[str, Check]:
    checks = asyncio.run(platform_checks(sim_url, agent, key, timeout=5.0, **kwargs))  # type: ignore[arg-type]
    return {check.name: check for check in checks}


@pytest.fixture(scope="module")
def platform() -> object:
    with SimulatorThread(api_key=KEY) as sim:
        yield sim


def test_the_key_and_the_agent_are_checked_with_a_signed_url_call(platform: SimulatorThread) -> None:
    url = platform.http_url
    good = ask(url, "agent_demo", KEY)
    assert good["api key"].ok and good["api key"].detail == "accepted; agent agent_demo exists"
    assert good["clock"].mark == "ok"
    refused = ask(url, "agent_demo", "sk_wrong")["api key"]
    assert not refused.ok and "HTTP 401" in refused.detail and "ELEVENLABS_API_KEY" in refused.detail
    keyless = ask(url, "agent_demo", "")["api key"]
    assert not keyless.ok and "needs a key" in keyless.detail
    unknown = ask(url, "agent_nobody", KEY)["api key"]
    assert not unknown.ok and "agent agent_nobody not found (HTTP 404)" in unknown.detail
    nothing = ask(url, None, KEY)
    assert not nothing["api key"].ok and "--agent-id" in nothing["api key"].detail
    for check in (good["api key"], refused, unknown):
        assert KEY not in check.detail


def test_an_unreachable_platform_fails_both_checks() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    checks = ask(f"http://127.0.0.1:{port}", "agent_demo", KEY)
    assert not checks["api key"].ok and "cannot reach" in checks["api key"].detail
    assert not checks["clock"].ok


@pytest.mark.parametrize(
    ("offset", "mark", "words"),
    [
        (0.0, "ok", "agrees"),
        (120.0, "ok", "s ahead of the platform"),
        (-600.0, "warn", "s behind the platform"),
        (3600.0, "FAIL", "refused"),
        (-7200.0, "FAIL", "hours off"),
    ],
)
def test_the_clock_is_compared_with_the_platforms_date_header(
    platform: SimulatorThread, offset: float, mark: str, words: str
) -> None:
    """The simulator's real Date header against this machine's clock, shifted as a skewed machine's would be."""
    clock = ask(platform.http_url, "agent_demo", KEY, clock=lambda: time.time() + offset)["clock"]
    assert clock.mark == mark, clock
    assert words in clock.detail


def test_the_webhook_secret_is_needed_only_with_a_webhook_port() -> None:
    assert webhook_secret_check(False, "").ok
    assert webhook_secret_check(True, "wsec_x").ok
    missing = webhook_secret_check(True, "  ")
    assert not missing.ok and "ELEVENLABS_WEBHOOK_SECRET" in missing.detail


def test_the_data_dir_takes_a_write_an_fsync_and_a_read_back(tmp_path: Path) -> None:
    checks = data_dir_checks(tmp_path / "data")
    assert checks[0].ok and "does not exist yet" in checks[0].detail
    assert list(tmp_path.iterdir()) == []  # the probe is gone, nothing created
    (tmp_path / "data").mkdir()
    assert data_dir_checks(tmp_path / "data")[0].detail.startswith(f"{tmp_path / 'data'}: write, fsync")
    (tmp_path / "file").write_text("not a folder")
    blocked = data_dir_checks(tmp_path / "file" / "data")[0]
    assert not blocked.ok and "is not a directory" in blocked.detail


@pytest.mark.skipif(filesystem_type(Path("/dev/shm")) != "tmpfs", reason="needs a tmpfs at /dev/shm")
def test_a_data_dir_in_memory_is_a_warning(tmp_path: Path) -> None:
    checks = {
        check.name: check for check in data_dir_checks(Path("/dev/shm") / f"capture-doctor-{os.getpid()}")
    }
    assert checks["data dir"].ok
    assert checks["filesystem"].mark == "warn" and "tmpfs" in checks["filesystem"].detail


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_the_lock_is_free_held_by_a_live_process_or_held_in_the_name_of_a_dead_one(data_dir: Path) -> None:
    import fcntl  # POSIX only

    data_dir.mkdir()
    assert lock_check(data_dir).detail.startswith("free")
    with LogWriter.open(data_dir, command="capture ingest"):
        held = lock_check(data_dir)
        assert held.ok and f"pid {os.getpid()}" in held.detail and held.detail.endswith("running")
    # A process holds the lock, but the file names one that is gone (an inherited descriptor).
    path = data_dir / LOCK_NAME
    path.write_bytes(
        orjson.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "command": "capture ingest"})
    )
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        dead = lock_check(data_dir)
    finally:
        os.close(fd)
    assert not dead.ok and "not running" in dead.detail


def test_the_projection_is_checked_against_the_log(data_dir: Path) -> None:
    assert projection_check(data_dir, None, live=False).detail == "no log yet"
    with LogWriter.open(data_dir, command="test") as writer:
        writer.append(ORIGIN, inspect_frame('{"type":"ping"}'))
    behind = projection_check(data_dir, None, live=False)
    assert not behind.ok and "1 lines behind" in behind.detail and "capture project" in behind.detail
    assert projection_check(data_dir, None, live=True).ok  # a live projection catches up within the bound
    stuck = projection_check(data_dir, None, live=True, max_lag=-1.0)
    assert not stuck.ok and "not keeping up" in stuck.detail
    project(data_dir)
    assert projection_check(data_dir, None, live=False).detail == "up to date at seq 1 (0 rows)"
    db = data_dir / "whatsapp_storage.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE projection_state SET schema_version = 1")
    conn.close()
    old = projection_check(data_dir, None, live=False)
    assert not old.ok and "capture rebuild" in old.detail


def test_the_duckdb_views_open_or_say_why_not(data_dir: Path) -> None:
    assert views_check(data_dir, None).detail == "no log yet"
    with LogWriter.open(data_dir, command="test") as writer:
        writer.append(ORIGIN, inspect_frame('{"type":"user_transcript","user_transcription_event":{}}'))
    assert views_check(data_dir, None).ok
    broken = data_dir / "broken.duckdb"
    broken.write_bytes(b"this is not a duckdb file" * 200)
    check = views_check(data_dir, broken)
    assert not check.ok and str(broken) in check.detail
