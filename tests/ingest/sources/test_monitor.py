"""The monitor source against the simulator's monitor socket on loopback: real sockets, real logs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ingest.errors import ConfigError
from ingest.log.envelope import LogLine
from ingest.log.reader import iter_log
from ingest.log.writer import LogWriter, events_dir
from ingest.simulator import AccountSpec, SimulatorThread
from ingest.sources.monitor import MonitorConfig, run_monitor
from tests.conftest import TIMEOUT_FACTOR
from tests.ingest.sources.rest.test_backfill import AGENT, KEY


def monitor_lines(data_dir: Path) -> list[LogLine]:
    folder = events_dir(data_dir)
    return [line for line in iter_log(folder) if line.source == "monitor"] if folder.exists() else []


def test_an_empty_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ELEVENLABS_API_KEY") as missing:
        MonitorConfig(AGENT, "http://127.0.0.1:1", "")
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
