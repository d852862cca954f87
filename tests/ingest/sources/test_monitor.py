"""``capture monitor`` against the simulator's monitor socket on loopback: real commands, real logs."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.errors import ConfigError
from ingest.log.envelope import LogLine
from ingest.log.reader import iter_log
from ingest.log.writer import LogWriter, events_dir
from ingest.simulator import AccountSpec, SimulatorThread
from ingest.sources.monitor import MonitorConfig, run_monitor
from tests.conftest import TIMEOUT_FACTOR, subprocess_env
from tests.ingest.sources.rest.test_backfill import AGENT, KEY, backfill_in_process, command, one_line


def monitor(
    sim: SimulatorThread, data_dir: Path, *args: str, key: str | None = KEY, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(**({"ELEVENLABS_API_KEY": key} if key else {}))
    argv = command(
        "monitor",
        "--agent-id",
        AGENT,
        "--base-url",
        sim.http_url,
        "--data-dir",
        str(data_dir),
        "--poll-interval",
        "0.05",
        *args,
    )
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout * TIMEOUT_FACTOR)


def monitor_lines(data_dir: Path) -> list[LogLine]:
    folder = events_dir(data_dir)
    return [line for line in iter_log(folder) if line.source == "monitor"] if folder.exists() else []


@pytest.fixture
def live() -> Iterator[SimulatorThread]:
    spec = AccountSpec(conversations=8, in_progress=3, processing=0, live_turn_gap=0.05, user_turns=(2, 3))
    with SimulatorThread(api_key=KEY, account=spec) as st:
        yield st


def test_attaches_to_each_live_conversation_at_once_and_logs_all_but_audio(
    live: SimulatorThread, data_dir: Path
) -> None:
    sim = live.sim
    assert sim.account is not None
    live_ids = {c.conversation_id for c in sim.account.of_agent(AGENT, "in-progress")}
    result = monitor(live, data_dir, "--max-conversations", "3")
    assert result.returncode == 0, result.stderr
    assert "3 conversations monitored" in result.stdout

    # One attachment per live conversation, all open together, each ended by the server with 1000.
    assert Counter(r.conversation_id for r in sim.monitors) == Counter(live_ids)
    assert all(r.http_status == 101 and r.close_code == 1000 for r in sim.monitors)
    opened = [r.opened_at for r in sim.monitors if r.opened_at is not None]
    closed = [r.closed_at for r in sim.monitors if r.closed_at is not None]
    assert len(opened) == len(closed) == 3 and max(opened) < min(closed)

    lines = monitor_lines(data_dir)
    by_conversation: dict[str, list[LogLine]] = defaultdict(list)
    for line in lines:
        assert line.conversation_id is not None and line.direction == "in"
        assert line.envelope["agent_id"] == AGENT
        by_conversation[line.conversation_id].append(line)
    assert set(by_conversation) == live_ids
    for record in sim.monitors:
        logged = by_conversation[record.conversation_id]
        assert len(logged) == record.frames_sent - record.audio_sent
        assert record.audio_sent > 0 and not [line for line in logged if line.type == "audio"]
        assert len({line.envelope["connection_id"] for line in logged}) == 1
        conversation = sim.account[record.conversation_id]
        spoken = [line.event["user_transcription_event"] for line in logged if line.type == "user_transcript"]  # type: ignore[index]
        # What the monitor saw is the transcript the REST API serves later, event ids included.
        assert [(s["user_transcript"], s["event_id"]) for s in spoken] == [
            (e["message"], e["source_event_id"]) for e in conversation.user_entries()
        ]
    assert len({lines[0].envelope["connection_id"] for lines in by_conversation.values()}) == 3
    assert KEY not in result.stdout + result.stderr

    # Once ended they are processing, then done: the backfill picks them up.
    report = backfill_in_process(live, data_dir, wait_pending=5 * TIMEOUT_FACTOR, pending_delay=0.05)
    assert (report.logged, report.unfinished) == (8, 0)


@pytest.mark.parametrize("refusal", ["http_403", "close_1008"])
def test_not_enabled_exits_2_with_one_line_and_no_retry_storm(refusal: str, data_dir: Path) -> None:
    spec = AccountSpec(conversations=5, in_progress=3, processing=0)
    with SimulatorThread(api_key=KEY, account=spec, monitor_enabled=False, monitor_refusal=refusal) as st:
        result = monitor(st, data_dir)
        attempts = len(st.sim.monitors)
    assert result.returncode == 2
    message = one_line(result.stderr)
    assert ("403" if refusal == "http_403" else "1008") in message
    assert "enterprise" in message and KEY not in message
    assert 1 <= attempts <= 3  # the live conversations found by the first poll, then stop
    assert not monitor_lines(data_dir)


def test_wrong_or_missing_key_exits_2(live: SimulatorThread, data_dir: Path) -> None:
    result = monitor(live, data_dir, key="sk_wrong")
    assert result.returncode == 2 and "401" in one_line(result.stderr)
    assert not live.sim.monitors
    with pytest.raises(ConfigError, match="ELEVENLABS_API_KEY") as missing:
        MonitorConfig(AGENT, live.http_url, "")
    assert missing.value.exit_code == 2


def test_stop_closes_the_sockets_and_returns(data_dir: Path) -> None:
    spec = AccountSpec(conversations=4, in_progress=2, processing=0, live_turn_gap=0.2, user_turns=(5, 5))
    with SimulatorThread(api_key=KEY, account=spec) as st:
        config = MonitorConfig(AGENT, st.http_url, KEY, poll_interval=0.05)

        async def main() -> None:
            stop = asyncio.Event()
            with LogWriter.open(data_dir, command="test") as writer:
                running = asyncio.ensure_future(run_monitor(writer, config, stop))
                while len(monitor_lines(data_dir)) < 2:
                    await asyncio.sleep(0.02)
                stop.set()
                report = await asyncio.wait_for(running, 10 * TIMEOUT_FACTOR)
            assert (report.attachments, report.conversations) == (2, 0)
            assert report.frames_logged == len(monitor_lines(data_dir))

        asyncio.run(asyncio.wait_for(main(), 20 * TIMEOUT_FACTOR))
        st.wait_for(lambda sim: all(r.closed_at is not None for r in sim.monitors), 5)
        assert [r.close_code for r in st.sim.monitors] == [1000, 1000]
