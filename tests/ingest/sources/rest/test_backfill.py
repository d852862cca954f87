"""``capture backfill`` against the simulator's REST API on loopback: real commands, real logs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ingest.errors import AuthError
from ingest.log.envelope import LogLine, Origin
from ingest.log.frames import inspect_frame
from ingest.log.reader import iter_log
from ingest.log.writer import LogWriter, events_dir
from ingest.simulator import AccountSpec, RestFault, Simulator, SimulatorThread
from ingest.sources.rest.backfill import BackfillConfig, BackfillReport, run_backfill
from tests.conftest import TIMEOUT_FACTOR, subprocess_env


KEY = "sk_simulated_key_0123456789"
AGENT = "agent_demo"

# Until cli/app.py registers them, the commands run from a Typer app of their own.
APP = (
    "import typer\n"
    "from cli.backfill_command import register as backfill\n"
    "from cli.monitor_command import register as monitor\n"
    "app = typer.Typer(pretty_exceptions_enable=False)\n"
    "backfill(app)\n"
    "monitor(app)\n"
    "app()\n"
)


def command(*args: str) -> list[str]:
    return [sys.executable, "-c", APP, *args]


def backfill(
    sim: SimulatorThread, data_dir: Path, *args: str, key: str | None = KEY, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    env = subprocess_env(**({"ELEVENLABS_API_KEY": key} if key else {}))
    argv = command(
        "backfill", "--agent-id", AGENT, "--base-url", sim.http_url, "--data-dir", str(data_dir), *args
    )
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout * TIMEOUT_FACTOR)


def backfill_in_process(sim: SimulatorThread, data_dir: Path, **options: Any) -> BackfillReport:
    """The same backfill as a library call (cheaper than a process, and its report is at hand)."""
    config = BackfillConfig(AGENT, sim.http_url, KEY, **options)

    async def main() -> BackfillReport:
        with LogWriter.open(data_dir, command="test") as writer:
            return await run_backfill(writer, config, asyncio.Event())

    return asyncio.run(main())


def rest_lines(data_dir: Path) -> list[LogLine]:
    folder = events_dir(data_dir)
    return [line for line in iter_log(folder) if line.source == "rest"] if folder.exists() else []


def finished(sim: SimulatorThread) -> list[str]:
    assert sim.sim.account is not None
    return [c.conversation_id for c in sim.sim.account.of_agent(AGENT, "done", "failed")]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def simulator(request: pytest.FixtureRequest) -> Iterator[SimulatorThread]:
    options = dict(getattr(request, "param", {}))
    options.setdefault("api_key", KEY)
    with SimulatorThread(**options) as st:
        yield st


def account(**spec: object) -> pytest.MarkDecorator:
    """Parametrize the ``simulator`` fixture with an account (and other simulator options)."""
    options = {k: spec.pop(k) for k in list(spec) if k.startswith(("rest_", "monitor_"))}
    return pytest.mark.parametrize("simulator", [{"account": AccountSpec(**spec), **options}], indirect=True)  # type: ignore[arg-type]


# -- what is logged --------------------------------------------------------------------


@account(
    conversations=130,
    other_agent_conversations=12,
    processing=0,
    escaped_every=5,
    pretty_every=11,
    rest_latency=0.002,
)
def test_pages_done_and_failed_logged_once_verbatim(simulator: SimulatorThread, data_dir: Path) -> None:
    result = backfill(simulator, data_dir, "--page-size", "25", "--concurrency", "3")
    assert result.returncode == 0, result.stderr
    assert "130 conversations listed, 130 logged" in result.stdout

    sim = simulator.sim
    assert sim.account is not None
    lists = [r for r in sim.rest_requests if r.kind == "list"]
    assert len(lists) == 6  # 130 / 25, newest first, the agent filter applied by the server
    assert all("agent_id=agent_demo" in r.path and "page_size=25" in r.path for r in lists)

    lines = rest_lines(data_dir)
    ids = [line.conversation_id for line in lines]
    assert Counter(ids) == Counter(finished(simulator))
    statuses = Counter(sim.account[i].status for i in ids if i is not None)
    assert statuses["done"] > 0 and statuses["failed"] > 0
    kinds: Counter[str] = Counter()
    for line in lines:
        assert line.conversation_id is not None
        assert line.direction == "in"
        assert line.envelope["agent_id"] == AGENT
        assert line.envelope["connection_id"] is None
        conversation = sim.account[line.conversation_id]
        # The body exactly as the server sent it: escapes, literal UTF-8, line breaks.
        assert line.frame == sim.account.body(line.conversation_id)
        if conversation.encoding == "pretty":
            assert line.event is None and line.envelope["raw"] == line.frame.decode()
        else:
            assert line.event is not None and line.event["conversation_id"] == line.conversation_id
        kinds[conversation.encoding] += 1
    assert kinds["pretty"] and kinds["escaped"] and kinds["compact"]
    assert any(b"\\u" in line.frame for line in lines) and any("ü".encode() in line.frame for line in lines)
    media = {
        entry["source_medium"]
        for line in lines
        if line.event is not None
        for entry in line.event["transcript"]
        if entry["role"] == "user"
    }
    assert media == {"audio", "text"}
    assert KEY.encode() not in b"".join(p.read_bytes() for p in events_dir(data_dir).iterdir())
    assert KEY not in result.stdout + result.stderr


@account(conversations=40, processing=0, rest_latency=0.002)
def test_rerun_logs_nothing_new_and_refresh_fetches_again(simulator: SimulatorThread, data_dir: Path) -> None:
    assert backfill_in_process(simulator, data_dir).logged == 40
    expected = Counter(finished(simulator))
    assert Counter(line.conversation_id for line in rest_lines(data_dir)) == expected
    gets_before = sum(r.kind == "get" for r in simulator.sim.rest_requests)

    again = backfill(simulator, data_dir)
    assert again.returncode == 0, again.stderr
    assert "0 logged" in again.stdout and "40 already in the log" in again.stdout
    assert sum(r.kind == "get" for r in simulator.sim.rest_requests) == gets_before
    assert Counter(line.conversation_id for line in rest_lines(data_dir)) == expected

    refreshed = backfill_in_process(simulator, data_dir, refresh=True)
    assert (refreshed.logged, refreshed.already_captured) == (40, 0)
    assert sum(r.kind == "get" for r in simulator.sim.rest_requests) == gets_before + 40
    assert Counter(line.conversation_id for line in rest_lines(data_dir)) == expected + expected


@account(conversations=12, processing=0, rest_latency=0.002)
def test_a_webhook_transcription_counts_as_captured(simulator: SimulatorThread, data_dir: Path) -> None:
    by_webhook = finished(simulator)[3]
    with LogWriter.open(data_dir) as writer:
        delivery = '{"type":"post_call_transcription","event_timestamp":1,"data":{"conversation_id":"%s"}}'
        writer.append(Origin("webhook", "in", AGENT, None, None), inspect_frame(delivery % by_webhook))
    report = backfill_in_process(simulator, data_dir)
    assert (report.already_captured, report.logged) == (1, 11)
    fetched = {r.conversation_id for r in simulator.sim.rest_requests if r.kind == "get"}
    assert by_webhook not in fetched
    assert len(fetched) == 11


BASE = 1_767_225_600  # 2026-01-01T00:00:00Z


@account(conversations=30, processing=0, start_unix=BASE, spacing_secs=60)
def test_since_and_until_bound_the_listing(simulator: SimulatorThread, data_dir: Path) -> None:
    report = backfill_in_process(simulator, data_dir, since=BASE + 600, until=BASE + 1200)
    assert (report.listed, report.logged) == (10, 10)
    assert simulator.sim.account is not None
    starts = sorted(
        simulator.sim.account[i].start_unix
        for i in {line.conversation_id or "" for line in rest_lines(data_dir)}
    )
    assert starts == [BASE + 60 * i for i in range(10, 20)]
    (listing,) = [r for r in simulator.sim.rest_requests if r.kind == "list"]
    assert f"call_start_after_unix={BASE + 600}" in listing.path
    assert f"call_start_before_unix={BASE + 1200}" in listing.path


@account(conversations=10, processing=4, done_after_polls=2, rest_latency=0.002)
def test_processing_is_asked_again_then_logged_once(simulator: SimulatorThread, data_dir: Path) -> None:
    sim = simulator.sim
    assert sim.account is not None
    processing = [c.conversation_id for c in sim.account.of_agent(AGENT, "processing")]
    config = BackfillConfig(AGENT, simulator.http_url, KEY, wait_pending=10, pending_delay=0.05)

    async def main() -> None:
        with LogWriter.open(data_dir) as writer:
            report = await run_backfill(writer, config, asyncio.Event())
        assert (report.logged, report.unfinished, report.errors) == (10, 0, 0)

    asyncio.run(main())
    lines = rest_lines(data_dir)
    assert Counter(line.conversation_id for line in lines) == Counter(finished(simulator))
    for conversation_id in processing:
        # Listed as processing (not asked), then two "processing" answers (not logged), then done.
        assert sim.account[conversation_id].gets == 3
        (logged,) = [line for line in lines if line.conversation_id == conversation_id]
        assert logged.event is not None and logged.event["status"] == "done"


@account(conversations=6, processing=2, done_after_polls=1000)
def test_unfinished_at_the_end_is_reported_and_left_for_the_next_run(
    simulator: SimulatorThread, data_dir: Path
) -> None:
    report = backfill_in_process(simulator, data_dir, wait_pending=0)
    assert (report.logged, report.unfinished, report.errors) == (4, 2, 0)
    assert simulator.sim.account is not None
    assert all(c.gets == 0 for c in simulator.sim.account.of_agent(AGENT, "processing"))


# -- resuming ------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@account(conversations=200, processing=0, rest_latency=0.005)
def test_killed_run_resumes_and_ends_with_each_conversation_once(
    simulator: SimulatorThread, data_dir: Path
) -> None:
    env = subprocess_env(ELEVENLABS_API_KEY=KEY)
    argv = command(
        "backfill", "--agent-id", AGENT, "--base-url", simulator.http_url, "--data-dir", str(data_dir)
    )
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(rest_lines(data_dir)) >= 40, 20, "40 conversations logged")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    before = Counter(line.conversation_id for line in rest_lines(data_dir))
    assert 40 <= len(before) < 200 and set(before.values()) == {1}
    gets_before = sum(r.kind == "get" for r in simulator.sim.rest_requests)

    result = backfill(simulator, data_dir)
    assert result.returncode == 0, result.stderr
    assert f"{len(before)} already in the log" in result.stdout
    after = Counter(line.conversation_id for line in rest_lines(data_dir))
    assert after == Counter(finished(simulator))
    # Nothing already logged was fetched again.
    assert sum(r.kind == "get" for r in simulator.sim.rest_requests) - gets_before == 200 - len(before)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM handling is POSIX here")
@account(conversations=5, processing=0)
def test_follow_catches_a_new_conversation(simulator: SimulatorThread, data_dir: Path) -> None:
    env = subprocess_env(ELEVENLABS_API_KEY=KEY)
    argv = command(
        "backfill",
        "--agent-id",
        AGENT,
        "--base-url",
        simulator.http_url,
        "--data-dir",
        str(data_dir),
        "--follow",
        "--interval",
        "0.2",
    )
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(rest_lines(data_dir)) == 5, 15, "the first pass")

        async def add() -> str:
            assert simulator.sim.account is not None
            return simulator.sim.account.add(status="done").conversation_id

        new = simulator.run(add())
        wait_until(lambda: new in {line.conversation_id for line in rest_lines(data_dir)}, 15, "the new one")
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15 * TIMEOUT_FACTOR)
    assert process.returncode == 0, err
    assert Counter(line.conversation_id for line in rest_lines(data_dir)) == Counter(finished(simulator))
    polls = [r for r in simulator.sim.rest_requests if r.kind == "list"]
    assert len(polls) >= 2 and "call_start_after_unix" in polls[-1].path


# -- throttling and the concurrency bound ----------------------------------------------------


@account(conversations=60, processing=0, rest_latency=0.02)
def test_concurrency_bound_is_never_exceeded(simulator: SimulatorThread, data_dir: Path) -> None:
    result = backfill(simulator, data_dir, "--concurrency", "3", "--page-size", "20")
    assert result.returncode == 0, result.stderr
    assert simulator.sim.rest_max_in_flight == 3
    assert simulator.sim.rest_throttled == 0


@account(conversations=40, processing=0, rest_latency=0.02, rest_max_concurrency=2)
def test_too_many_concurrent_requests_waits_for_a_slot(simulator: SimulatorThread, data_dir: Path) -> None:
    report = backfill_in_process(simulator, data_dir, concurrency=4)
    assert report.throttled == simulator.sim.rest_throttled > 0
    assert (report.logged, report.errors) == (40, 0)
    assert Counter(line.conversation_id for line in rest_lines(data_dir)) == Counter(finished(simulator))


@account(conversations=8, processing=0)
def test_429_variants_and_retry_after(simulator: SimulatorThread, data_dir: Path) -> None:
    sim = simulator.sim

    async def script() -> None:
        sim.rest_faults.extend(
            [
                RestFault("system_busy", retry_after=1, on="get"),
                RestFault("too_many_concurrent_requests", retry_after=0.5, on="get"),
                RestFault("too_many_concurrent_requests", retry_after=None, on="get"),
                RestFault("internal", http_status=503, on="get"),
            ]
        )

    simulator.run(script())
    result = backfill(simulator, data_dir, "--concurrency", "2")
    assert result.returncode == 0, result.stderr
    assert Counter(line.conversation_id for line in rest_lines(data_dir)) == Counter(finished(simulator))
    assert sim.rest_throttled == 3 and not sim.rest_faults

    requests = sim.rest_requests
    for record in requests:
        if record.status not in (429, 503):
            continue
        retry = next(
            r
            for r in requests[record.index :]
            if r.kind == record.kind and r.conversation_id == record.conversation_id
        )
        assert record.answered_at is not None
        waited = retry.arrived_at - record.answered_at
        if record.retry_after is not None:
            assert waited >= float(record.retry_after), (record, waited)
        elif record.detail_status == "too_many_concurrent_requests":
            assert waited < 1.5  # a slot, not a backoff
    busy = next(r for r in requests if r.detail_status == "system_busy" and r.retry_after == "1")
    assert busy.answered_at is not None
    # system_busy holds every request back, not only the one that got it.
    assert not [r for r in requests if busy.answered_at + 0.1 < r.arrived_at < busy.answered_at + 0.95]


# -- refusals --------------------------------------------------------------------------------


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


@account(conversations=3)
def test_wrong_key_exits_2_with_one_line(simulator: SimulatorThread, data_dir: Path) -> None:
    result = backfill(simulator, data_dir, key="sk_wrong_key")
    assert result.returncode == 2
    message = one_line(result.stderr)
    assert "401" in message and "ELEVENLABS_API_KEY" in message and "sk_wrong_key" not in message
    assert not rest_lines(data_dir)


@account(conversations=3)
def test_forbidden_exits_2(simulator: SimulatorThread, data_dir: Path) -> None:
    simulator.run(_append_fault(simulator.sim, RestFault("missing_permissions", http_status=403, on="list")))
    with pytest.raises(AuthError, match="403") as refused:
        backfill_in_process(simulator, data_dir)
    assert refused.value.exit_code == 2


async def _append_fault(sim: Simulator, fault: RestFault) -> None:
    sim.rest_faults.append(fault)


@account(conversations=3)
def test_missing_key_exits_2(simulator: SimulatorThread, data_dir: Path) -> None:
    result = backfill(simulator, data_dir, key=None)
    assert result.returncode == 2 and "ELEVENLABS_API_KEY" in one_line(result.stderr)
    assert not simulator.sim.rest_requests


@account(conversations=3)
def test_the_data_dir_lock_is_respected(simulator: SimulatorThread, data_dir: Path) -> None:
    with LogWriter.open(data_dir):
        started = time.monotonic()
        result = backfill(simulator, data_dir)
    assert result.returncode == 1
    assert str(os.getpid()) in one_line(result.stderr)
    assert time.monotonic() - started < 10
    assert not simulator.sim.rest_requests
