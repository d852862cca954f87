"""Shared fixtures: a loopback simulator, quick reconnect timing, a clean environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


#: The checkout's root: the folder holding ingest/, projections/ and cli/.
REPO_ROOT = Path(__file__).resolve().parent.parent

# Every wait in the tests is a condition with a timeout; this scales them all
# on a slow machine (like websockets' WEBSOCKETS_TESTS_TIMEOUT_FACTOR).
TIMEOUT_FACTOR = float(os.environ.get("CAPTURE_TESTS_TIMEOUT_FACTOR", "1"))

FAST_RECONNECT_ENV = {
    "CAPTURE_BACKOFF_INITIAL_DELAY": "0.05",
    "CAPTURE_BACKOFF_MIN_DELAY": "0.05",
    "CAPTURE_BACKOFF_FACTOR": "2",
    "CAPTURE_BACKOFF_MAX_DELAY": "0.5",
    "CAPTURE_HEALTHY_AFTER": "0.3",
    "CAPTURE_NORMAL_PAUSE": "0.05",
}

_OUR_VARS = (
    "ELEVENLABS_API_KEY",
    "ELEVENLABS_WEBHOOK_SECRET",
    "AGENT_ID",
    "ELEVENLABS_BASE_URL",
    "CAPTURE_DATA_DIR",
    "WHATSAPP_DB_PATH",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's credentials or data dir."""
    for name in _OUR_VARS:
        monkeypatch.delenv(name, raising=False)


def capture_command() -> list[str]:
    """The argv prefix that runs this checkout's ``capture`` in a subprocess."""
    return [sys.executable, "-c", "from cli.app import main; main()"]


def listening_port(proc: subprocess.Popen[str], timeout: float) -> int:
    """The port a ``capture webhook`` (or ``ingest``) subprocess says it listens on, from its stderr."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
        if match:
            return int(match.group(1))
    raise AssertionError("the receiver never said where it listens")


def subprocess_env(**extra: str) -> dict[str, str]:
    """An environment for ``capture`` subprocesses: fast reconnects, no credentials."""
    env = {k: v for k, v in os.environ.items() if k not in _OUR_VARS}
    env.update(FAST_RECONNECT_ENV)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
