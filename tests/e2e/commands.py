"""Running the real ``capture`` commands in processes, and waiting on what they write."""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from tests.conftest import TIMEOUT_FACTOR, capture_command, subprocess_env


#: Seconds a command gets to finish, or to exit after SIGTERM.
TIMEOUT = 60 * TIMEOUT_FACTOR


def capture(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``capture *args`` to its end, with ``env`` added to a clean environment."""
    return subprocess.run(
        [*capture_command(), *args],
        env=subprocess_env(**env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def start(*args: str, **env: str) -> subprocess.Popen[str]:
    """Start ``capture *args`` with its output piped."""
    return subprocess.Popen(
        [*capture_command(), *args],
        env=subprocess_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def terminate(proc: subprocess.Popen[str]) -> str:
    """SIGTERM ``proc``, check that it exits 0 without a traceback, and return its stderr."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return err


@contextlib.contextmanager
def running(*args: str, **env: str) -> Iterator[subprocess.Popen[str]]:
    """Run ``capture *args`` for the body; then SIGTERM it and check it exits 0 without a traceback.

    If the body fails, the process is killed instead.
    """
    proc = start(*args, **env)
    try:
        yield proc
        terminate(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``predicate()`` is true, for at most ``timeout`` seconds (scaled by TIMEOUT_FACTOR)."""
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def one_line(text: str) -> str:
    """The only non-blank line of ``text`` (an error message); fail if there are more."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def user_texts(db: Path) -> list[tuple[str, str, str]]:
    """(session_id, text, sources) of every row of the SQLite ``user_texts`` table; none before it exists."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
    try:
        return conn.execute("SELECT session_id, text, sources FROM user_texts ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []  # created, but not its table yet
    finally:
        conn.close()


def assert_children_never_saw(proc: subprocess.Popen[str], *secrets: str) -> None:
    """Check that ``proc`` has children (the live projection) and that none has a secret in its environment."""
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "no child process (the live projection) to check"
    for child in children:
        values = set(child.environ().values())
        assert not values & set(secrets), f"a secret reached the environment of {child.cmdline()}"
