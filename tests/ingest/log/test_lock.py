"""Tests of ingest.log.lock: one writer per data dir, in this process and across processes."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from ingest.errors import LockedError
from ingest.log.lock import LOCK_NAME, DataDirLock, probe_lock
from ingest.log.writer import FsyncPolicy, LogWriter
from tests.conftest import REPO_ROOT, TIMEOUT_FACTOR


REPO = REPO_ROOT

HOLDER_SCRIPT = """
import sys
from pathlib import Path
from ingest.log.writer import LogWriter
writer = LogWriter.open(Path(sys.argv[1]), command="capture ingest (test holder)")
print("ready", flush=True)
sys.stdin.read()
"""


def test_lock_file_names_the_holder(tmp_path: Path) -> None:
    """The lock file records this process's pid, host, start time and command."""
    with DataDirLock(tmp_path, "capture test") as lock:
        assert lock.held
        info = orjson.loads((tmp_path / LOCK_NAME).read_bytes())
        assert info["pid"] == os.getpid()
        assert info["command"] == "capture test"
        assert info["host"]
        assert info["started_at"].endswith("Z")
    assert not lock.held


def test_release_is_idempotent_and_lock_reacquirable(tmp_path: Path) -> None:
    """Releasing twice is harmless and the lock can be taken again."""
    lock = DataDirLock(tmp_path)
    lock.acquire()
    lock.release()
    lock.release()
    with DataDirLock(tmp_path):
        pass


def test_second_writer_in_process_raises_locked_error(tmp_path: Path) -> None:
    """A second LogWriter.open on the same data dir fails at once, naming the holder's pid."""
    with LogWriter.open(tmp_path, fsync=FsyncPolicy.NEVER):
        with pytest.raises(LockedError, match=rf"pid {os.getpid()}\b") as info:
            LogWriter.open(tmp_path, fsync=FsyncPolicy.NEVER)
        assert str(tmp_path) in str(info.value)
        assert "--data-dir" in str(info.value)
    # Released on close: a new writer may open.
    with LogWriter.open(tmp_path, fsync=FsyncPolicy.NEVER):
        pass


def test_probe_lock_while_held_and_after(tmp_path: Path) -> None:
    """probe_lock returns the holder while the lock is held and None after."""
    assert probe_lock(tmp_path) is None
    with DataDirLock(tmp_path, "capture ingest"):
        holder = probe_lock(tmp_path)
        assert holder is not None
        assert holder.pid == os.getpid()
        assert holder.command == "capture ingest"
        assert f"pid {os.getpid()}" in str(holder)
    assert probe_lock(tmp_path) is None
    assert (tmp_path / LOCK_NAME).exists()


def _readline_with_timeout(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    stdout = proc.stdout
    assert stdout is not None
    lines: queue.Queue[bytes] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
    try:
        return lines.get(timeout=timeout * TIMEOUT_FACTOR)
    except queue.Empty:
        pytest.fail(f"the holder process did not get ready within {timeout} s")


def test_lock_held_by_another_process_and_dropped_when_it_dies(tmp_path: Path) -> None:
    """A writer in another process excludes this one, and killing it frees the lock."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, str(tmp_path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = _readline_with_timeout(proc, timeout=20)
        assert line.strip() == b"ready", proc.stderr.read() if proc.stderr else line
        with pytest.raises(LockedError, match=rf"pid {proc.pid}\b"):
            LogWriter.open(tmp_path, fsync=FsyncPolicy.NEVER)
        holder = probe_lock(tmp_path)
        assert holder is not None
        assert holder.pid == proc.pid
        assert holder.command == "capture ingest (test holder)"
    finally:
        proc.kill()
        proc.communicate(timeout=10 * TIMEOUT_FACTOR)
    assert probe_lock(tmp_path) is None
    with LogWriter.open(tmp_path, fsync=FsyncPolicy.NEVER) as writer:
        assert writer.next_seq == 1
