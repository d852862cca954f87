"""``capture simulate`` as a user runs it: a real process on loopback, stopped by a signal."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import orjson
import pytest

from tests.conftest import TIMEOUT_FACTOR, capture_command, subprocess_env


@contextmanager
def simulating(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run ``capture simulate --port 0 ARGS``; yield the process and its base URL."""
    proc = subprocess.Popen(
        [*capture_command(), "simulate", "--port", "0", *args],
        env=subprocess_env(COLUMNS="200"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = None
        for line in proc.stdout:
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            if match:
                url = match.group(1)
                break
        assert url is not None, proc.communicate(timeout=10 * TIMEOUT_FACTOR)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10 * TIMEOUT_FACTOR) as response:  # noqa: S310 (loopback)
        return orjson.loads(response.read())


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_small_account_on_chosen_channels_then_ctrl_c() -> None:
    """``--account 2`` used to crash with a traceback (3 processing conversations did not fit in 2)."""
    with simulating("--account", "2", "--channel", "whatsapp", "--channel", "sms") as (proc, url):
        page = get_json(f"{url}/v1/convai/conversations?agent_id=agent_demo")
        assert isinstance(page, dict)
        conversations = page["conversations"]
        assert len(conversations) == 2
        sources = {c["conversation_initiation_source"] for c in conversations}
        assert sources == {"whatsapp", "twilio_sms"}
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10 * TIMEOUT_FACTOR)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--account", "2", "--in-progress", "3"], "--in-progress"),
        (["--account", "2", "--channel", "phone"], "--channel"),
        (["--scenario", "explode"], "explode"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(args: list[str], says: str) -> None:
    result = subprocess.run(
        [*capture_command(), "simulate", "--port", "0", *args],
        env=subprocess_env(COLUMNS="200"),
        capture_output=True,
        text=True,
        timeout=30 * TIMEOUT_FACTOR,
    )
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
