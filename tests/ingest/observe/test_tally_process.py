"""The tally's own process: counts reported as the log grows, nicer than the run, no secret, gone on close."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.writer import LogWriter, events_dir
from ingest.observe.tally_process import TallyProcess
from tests.conftest import TIMEOUT_FACTOR


ORIGIN = Origin("agent_ws", "in", "agent_x", "c1", "conv_1")


def test_it_reports_the_lines_appended_after_its_position_and_ends_with_its_stdin(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELEVENLABS_API_KEY", "sk_never_in_a_child")

    async def main() -> None:
        with LogWriter.open(data_dir, command="test") as writer:
            writer.append(ORIGIN, inspect_frame('{"type":"ping"}'))  # before its position: not counted
            segment = writer.active_segment
            assert segment is not None
            tally = TallyProcess()
            await tally.start(events_dir(data_dir), segment, segment.stat().st_size, every=0.05)
            try:
                process = psutil.Process(tally._process.pid)  # type: ignore[union-attr]
                deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
                while "ingest.observe.tally_process" not in process.cmdline():  # until its exec
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                environ = process.environ()
                assert environ and "sk_never_in_a_child" not in environ.values()
                if sys.platform != "win32":
                    assert process.nice() == 19
                for _ in range(3):
                    writer.append(ORIGIN, inspect_frame('{"type":"agent_response"}'))
                deadline = time.monotonic() + 10 * TIMEOUT_FACTOR
                while tally.counts != {("agent_ws", "in", "agent_response"): 3}:
                    assert time.monotonic() < deadline, tally.counts
                    await asyncio.sleep(0.02)
                writer.append(ORIGIN, inspect_frame('{"type":"agent_response"}'))
            finally:
                await tally.close()
        assert tally.counts == {("agent_ws", "in", "agent_response"): 4}  # the last count, at close
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
        assert os.environ["ELEVENLABS_API_KEY"] == "sk_never_in_a_child"

    asyncio.run(main())
