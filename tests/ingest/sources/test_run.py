"""The one writer lifecycle, with real writers, real files, real signals; the sources are small coroutines."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ingest.errors import AuthError, LockedError, LogWriteError, ProjectionError
from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.lock import probe_lock
from ingest.log.reader import iter_log
from ingest.log.writer import FsyncPolicy, LogWriter, events_dir
from ingest.sources import LogSettings, Sidecar, run_source, run_sources
from tests.conftest import TIMEOUT_FACTOR


ORIGIN = Origin("test", "in", "agent_x", None, None)
TIMEOUT = 10 * TIMEOUT_FACTOR


T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coroutine, TIMEOUT)

    return asyncio.run(bounded())


def texts(data_dir: Path) -> list[str]:
    return [line.frame.decode() for line in iter_log(events_dir(data_dir))]


async def until_stopped(writer: LogWriter, stop: asyncio.Event) -> str:
    writer.append(ORIGIN, inspect_frame('{"type":"waiting"}'))
    await stop.wait()
    return "stopped"


def test_the_first_source_to_return_ends_the_run(data_dir: Path) -> None:
    """The others are stopped, every report comes back in order, the log is closed and unlocked."""

    async def one_shot(writer: LogWriter, stop: asyncio.Event) -> str:
        await asyncio.sleep(0.05)  # the other source is waiting by now
        writer.append(ORIGIN, inspect_frame('{"type":"done"}'))
        return "done"

    reports = run(run_sources([until_stopped, one_shot], LogSettings(data_dir), handle_signals=False))
    assert reports == ["stopped", "done"]
    assert texts(data_dir) == ['{"type":"waiting"}', '{"type":"done"}']
    assert probe_lock(data_dir) is None


def test_a_failing_source_stops_the_others_then_its_error_is_raised(data_dir: Path) -> None:
    ended: list[str] = []

    async def patient(writer: LogWriter, stop: asyncio.Event) -> None:
        await stop.wait()
        writer.append(ORIGIN, inspect_frame('{"type":"last words"}'))  # the log is still open
        ended.append("patient")

    async def refused(writer: LogWriter, stop: asyncio.Event) -> None:
        await asyncio.sleep(0.05)
        raise AuthError("the server refused the key")

    with pytest.raises(AuthError, match="refused the key"):
        run(run_sources([patient, refused], LogSettings(data_dir), handle_signals=False))
    assert ended == ["patient"]
    assert texts(data_dir) == ['{"type":"last words"}']
    assert probe_lock(data_dir) is None


def test_stop_ends_the_run_and_run_source_returns_the_report(data_dir: Path) -> None:
    async def main() -> str:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        return await run_source(until_stopped, LogSettings(data_dir), stop=stop, handle_signals=False)

    assert run(main()) == "stopped"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fsync of a pipe fails with EINVAL on Linux")
def test_a_failed_background_fsync_ends_the_run_with_its_error(data_dir: Path) -> None:
    read_end, write_end = os.pipe()

    async def doomed(writer: LogWriter, stop: asyncio.Event) -> str:
        assert writer.active_segment is not None
        os.dup2(write_end, writer._active.fd)  # type: ignore[union-attr]
        writer.append(ORIGIN, inspect_frame('{"type":"into the pipe"}'))
        await stop.wait()  # set from the fsync thread
        return "stopped"

    settings = LogSettings(data_dir, fsync=FsyncPolicy.INTERVAL, fsync_interval=0.01)
    try:
        with pytest.raises(LogWriteError, match="fsync"):
            run(run_source(doomed, settings, handle_signals=False))
    finally:
        os.close(read_end)
        os.close(write_end)
    assert probe_lock(data_dir) is None


def test_sidecars_see_the_open_log_and_stop_after_it_closed(data_dir: Path) -> None:
    events: list[str] = []

    def sidecar(name: str) -> Sidecar:
        def start(writer: LogWriter) -> Callable[[], None]:
            events.append(f"start {name}: locked={probe_lock(data_dir) is not None}")

            def stop() -> None:
                events.append(f"stop {name}: locked={probe_lock(data_dir) is not None}, {texts(data_dir)}")

            return stop

        return start

    async def one_line(writer: LogWriter, stop: asyncio.Event) -> None:
        writer.append(ORIGIN, inspect_frame('{"type":"x"}'), defer=True)  # written by the close

    run(
        run_sources(
            [one_line],
            LogSettings(data_dir),
            sidecars=[sidecar("a"), sidecar("b")],
            handle_signals=False,
        )
    )
    assert events == [
        "start a: locked=True",
        "start b: locked=True",
        """stop b: locked=False, ['{"type":"x"}']""",
        """stop a: locked=False, ['{"type":"x"}']""",
    ]


def test_a_sidecar_that_cannot_start_ends_the_run_before_any_source(data_dir: Path) -> None:
    stopped: list[str] = []
    ran: list[str] = []

    def fine(writer: LogWriter) -> Callable[[], None]:
        return lambda: stopped.append("fine")

    def broken(writer: LogWriter) -> Callable[[], None]:
        raise ProjectionError("the database needs `capture rebuild`")

    async def source(writer: LogWriter, stop: asyncio.Event) -> None:
        ran.append("source")

    with pytest.raises(ProjectionError, match="capture rebuild"):
        run(run_sources([source], LogSettings(data_dir), sidecars=[fine, broken], handle_signals=False))
    assert (stopped, ran) == (["fine"], [])
    assert probe_lock(data_dir) is None


def test_a_locked_data_dir_is_refused_before_any_source_runs(data_dir: Path) -> None:
    ran: list[str] = []

    async def source(writer: LogWriter, stop: asyncio.Event) -> None:
        ran.append("source")

    with LogWriter.open(data_dir, command="capture webhook"):
        with pytest.raises(LockedError, match="capture webhook"):
            run(
                run_sources([source], LogSettings(data_dir, command="capture backfill"), handle_signals=False)
            )
    assert ran == []


def test_the_lock_names_the_command(data_dir: Path) -> None:
    async def holder(writer: LogWriter, stop: asyncio.Event) -> str:
        holder_info = probe_lock(data_dir)
        assert holder_info is not None
        return str(holder_info.command)

    assert run(
        run_source(holder, LogSettings(data_dir, command="capture monitor"), handle_signals=False)
    ) == ("capture monitor")


def test_a_recovered_torn_tail_is_a_warning(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with LogWriter.open(data_dir, command="test") as writer:
        writer.append(ORIGIN, inspect_frame('{"type":"kept"}'))
        segment = writer.active_segment
    assert segment is not None
    with segment.open("ab") as f:
        f.write(b'{"seq":2,"recei')  # a line cut by a power failure

    async def nothing(writer: LogWriter, stop: asyncio.Event) -> int:
        return writer.next_seq

    with caplog.at_level(logging.WARNING, logger="capture.ingest"):
        assert run(run_source(nothing, LogSettings(data_dir), handle_signals=False)) == 2
    assert any("recovered the log: 15 torn bytes from seq 2" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_the_run_and_the_process_exits_cleanly(data_dir: Path, signum: int) -> None:
    """In a real process: the signal sets stop, the sources finish, the function returns normally."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from ingest.sources import LogSettings, run_source

        async def source(writer, stop):
            print("ready", flush=True)
            await stop.wait()
            return "stopped by a signal"

        print(asyncio.run(run_source(source, LogSettings(Path({str(data_dir)!r})))))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out, err) == (0, "stopped by a signal\n", "")
    assert probe_lock(data_dir) is None
