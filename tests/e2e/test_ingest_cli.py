"""``capture ingest`` and ``capture status`` as a user runs them: real processes, signals, kill -9."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from ingest.log.lock import probe_lock
from ingest.log.reader import iter_log
from ingest.log.status import log_status
from ingest.log.writer import events_dir
from ingest.simulator import Scenario, SimulatorThread
from tests.e2e.commands import capture, start, terminate, wait_until


POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def ingest_args(data_dir: Path, url: str, *args: str) -> list[str]:
    """``capture ingest`` with the demo agent of the simulator at ``url``, without the live projection."""
    return [
        "ingest",
        "--agent-id",
        "agent_demo",
        "--base-url",
        url,
        "--data-dir",
        str(data_dir),
        "--no-project",
        *args,
    ]


def log_lines(data_dir: Path) -> int:
    return log_status(data_dir).lines


@pytest.fixture
def sim_wait() -> Iterator[SimulatorThread]:
    with SimulatorThread(default=Scenario(end="wait"), ping_interval=0.05) as thread:
        yield thread


@POSIX_ONLY
def test_sigterm_closes_1000_and_releases_the_lock(data_dir: Path, sim_wait: SimulatorThread) -> None:
    """SIGTERM closes the connection with 1000, fsyncs, releases the lock and exits 0 within seconds."""
    proc = start(*ingest_args(data_dir, sim_wait.http_url))
    try:
        wait_until(lambda: log_lines(data_dir) >= 5, 15, "frames in the log")
        assert probe_lock(data_dir) is not None
        stderr = terminate(proc)
    finally:
        proc.kill()
    sim_wait.wait_for(lambda s: s.connections[0].close_code is not None, 5)
    assert sim_wait.sim.connections[0].close_code == 1000
    assert probe_lock(data_dir) is None
    assert "conversation conv_" in stderr  # the one process-log line of the connection


def test_second_ingest_on_the_same_data_dir_exits_at_once(data_dir: Path, sim_wait: SimulatorThread) -> None:
    """A second ingest on a locked data dir exits non-zero at once with one line naming the holder."""
    first = start(*ingest_args(data_dir, sim_wait.http_url))
    try:
        wait_until(lambda: probe_lock(data_dir) is not None, 15, "the first ingest's lock")
        started = time.monotonic()
        second = capture(*ingest_args(data_dir, sim_wait.http_url))
        assert time.monotonic() - started < 10
        assert second.returncode == 1
        assert f"pid {first.pid}" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.kill()
        first.communicate()


def test_refused_key_exits_2_with_one_line(data_dir: Path) -> None:
    """A wrong API key is one line on stderr saying what to fix, exit code 2, and the key is not shown."""
    with SimulatorThread(api_key="the-right-key") as thread:
        result = capture(
            "ingest",
            "--agent-id",
            "agent_demo",
            "--base-url",
            thread.http_url,
            "--data-dir",
            str(data_dir),
            ELEVENLABS_API_KEY="sk_wrong_key_value",
        )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "ELEVENLABS_API_KEY" in errors[0]
    assert "Traceback" not in result.stderr
    assert "sk_wrong_key_value" not in result.stderr + result.stdout


def test_bad_flags_are_one_line_and_exit_2(data_dir: Path) -> None:
    """A missing agent id, a bad base URL or a bad size are one line and exit 2."""
    missing = capture("ingest", "--data-dir", str(data_dir))
    assert missing.returncode == 2 and "AGENT_ID" in missing.stderr
    bad_url = capture("ingest", "--agent-id", "a", "--base-url", "ftp://x", "--data-dir", str(data_dir))
    assert bad_url.returncode == 2 and "--base-url" in bad_url.stderr
    bad_size = capture("ingest", "--agent-id", "a", "--segment-size", "lots", "--data-dir", str(data_dir))
    assert bad_size.returncode == 2 and "--segment-size" in bad_size.stderr
    for result in (missing, bad_url, bad_size):
        assert "Traceback" not in result.stderr


@POSIX_ONLY
def test_kill_9_during_a_flood_leaves_a_gap_free_prefix(data_dir: Path) -> None:
    """After kill -9 mid-flood the log is a gap-free prefix of what was received; the next start recovers."""
    flood = Scenario(
        name="flood", fault=None, flood=400_000, first_message=None, user_turns=[], extra_events=False
    )
    with SimulatorThread(script=[flood], default=Scenario(user_turns=["after the crash"])) as thread:
        proc = start(*ingest_args(data_dir, thread.http_url, "--fsync", "never"))
        try:
            wait_until(lambda: log_lines(data_dir) >= 20_000, 30, "the flood to be in the log")
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
        finally:
            proc.kill()
        lines = list(iter_log(events_dir(data_dir)))
        assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
        flooded = [line.event for line in lines if line.type == "user_transcript"]
        ids = [event["user_transcription_event"]["event_id"] for event in flooded if event]
        assert ids == list(range(1, len(ids) + 1)), "not a gap-free prefix of what the server sent"
        assert len(ids) >= 19_000
        # The next start recovers cleanly and continues the seq.
        result = capture(*ingest_args(data_dir, thread.http_url, "--max-conversations", "1"))
    assert result.returncode == 0, result.stderr
    after = list(iter_log(events_dir(data_dir)))
    assert [line.seq for line in after] == list(range(1, len(after) + 1))
    assert len(after) > len(lines)
    assert any(
        line.event
        and line.event.get("user_transcription_event", {}).get("user_transcript") == "after the crash"
        for line in after
    )


def test_status_reports_the_log(data_dir: Path) -> None:
    """``capture status --json`` reports segments, lines, last seq and that no ingest runs."""
    with SimulatorThread() as thread:
        done = capture(*ingest_args(data_dir, thread.http_url, "--max-conversations", "1"))
    assert done.returncode == 0, done.stderr
    result = capture("status", "--data-dir", str(data_dir), "--json")
    assert result.returncode == 0, result.stderr
    status = orjson.loads(result.stdout)
    assert status["segments"] == 1
    assert status["lines"] == status["last_seq"] > 3
    assert status["writer"] is None
    assert status["quarantined"] == []


def test_rotation_by_size_through_the_cli(data_dir: Path) -> None:
    """--segment-size rolls segments; names sort in log order and seq runs across them."""
    with SimulatorThread(default=Scenario(user_turns=["one", "two", "three"])) as thread:
        result = capture(
            *ingest_args(data_dir, thread.http_url, "--max-conversations", "2", "--segment-size", "1KiB")
        )
    assert result.returncode == 0, result.stderr
    segments = sorted(p.name for p in events_dir(data_dir).glob("*.jsonl"))
    assert len(segments) > 2
    lines = list(iter_log(events_dir(data_dir)))
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    assert os.path.getsize(events_dir(data_dir) / segments[0]) >= 1024
