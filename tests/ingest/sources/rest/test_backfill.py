"""The REST backfill against the simulator's REST API on loopback: real HTTP, real logs."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.errors import AuthError
from ingest.log.envelope import LogLine, Origin
from ingest.log.frames import inspect_frame
from ingest.log.reader import iter_log
from ingest.log.writer import LogWriter, events_dir
from ingest.simulator import AccountSpec, RestFault, Simulator, SimulatorThread
from ingest.simulator.webhook_sender import TRANSCRIPTION, TRANSCRIPTION_OTEL, DeliveryFactory
from ingest.sources.rest.backfill import BackfillConfig, BackfillReport, run_backfill
from ingest.sources.rest.policy import RetryPolicy
from tests.ingest.sources.webhook.test_receiver import SECRET, receiving


KEY = "sk_simulated_key_0123456789"
AGENT = "agent_demo"


def backfill_in_process(sim: SimulatorThread, data_dir: Path, **options: Any) -> BackfillReport:
    """A backfill as a library call, on a writer of its own; its report."""
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


@account(conversations=40, processing=0, rest_latency=0.002)
def test_rerun_logs_nothing_new_and_refresh_fetches_again(simulator: SimulatorThread, data_dir: Path) -> None:
    assert backfill_in_process(simulator, data_dir).logged == 40
    expected = Counter(finished(simulator))
    assert Counter(line.conversation_id for line in rest_lines(data_dir)) == expected
    gets_before = sum(r.kind == "get" for r in simulator.sim.rest_requests)

    again = backfill_in_process(simulator, data_dir)
    assert (again.logged, again.already_captured) == (0, 40)
    assert sum(r.kind == "get" for r in simulator.sim.rest_requests) == gets_before
    assert Counter(line.conversation_id for line in rest_lines(data_dir)) == expected

    refreshed = backfill_in_process(simulator, data_dir, refresh=True)
    assert (refreshed.logged, refreshed.already_captured) == (40, 0)
    assert sum(r.kind == "get" for r in simulator.sim.rest_requests) == gets_before + 40
    assert Counter(line.conversation_id for line in rest_lines(data_dir)) == expected + expected


@account(conversations=12, processing=0, rest_latency=0.002)
def test_only_a_webhook_with_the_transcript_counts_as_captured(
    simulator: SimulatorThread, data_dir: Path
) -> None:
    sim = simulator.sim
    assert sim.account is not None
    complete, excluded, otel = finished(simulator)[3:6]
    factory = DeliveryFactory(SECRET)

    async def record(conversation_id: str) -> dict[str, Any]:
        assert sim.account is not None
        body: dict[str, Any] = orjson.loads(sim.account.body(conversation_id))
        return body

    deliveries = [
        factory.transcription(data=simulator.run(record(complete))),
        # Sent by an agent with the "exclude transcript" webhook option: no data.transcript.
        factory.transcription(data=simulator.run(record(excluded)), exclude_transcript=True),
        factory.transcription_otel(conversation=sim.account[otel]),
    ]

    async def deliver() -> None:
        async with receiving(data_dir) as receiver:
            assert [await receiver.post(d) for d in deliveries] == [200, 200, 200]

    asyncio.run(deliver())
    logged = [line for line in iter_log(events_dir(data_dir)) if line.source == "webhook"]
    assert [line.type for line in logged] == [TRANSCRIPTION, TRANSCRIPTION, TRANSCRIPTION_OTEL]

    report = backfill_in_process(simulator, data_dir)
    assert (report.already_captured, report.logged) == (1, 11)
    fetched = Counter(r.conversation_id for r in sim.rest_requests if r.kind == "get")
    assert complete not in fetched
    assert fetched[excluded] == fetched[otel] == 1
    assert {line.conversation_id for line in rest_lines(data_dir)} == set(finished(simulator)) - {complete}


@account(conversations=4, processing=0)
def test_a_rest_line_without_a_transcript_is_fetched_again(
    simulator: SimulatorThread, data_dir: Path
) -> None:
    bare, whole = finished(simulator)[1:3]
    with LogWriter.open(data_dir) as writer:
        for conversation_id, body in [
            (bare, {"conversation_id": bare, "status": "done"}),
            (whole, {"conversation_id": whole, "status": "done", "transcript": []}),
        ]:
            writer.append(
                Origin("rest", "in", AGENT, None, conversation_id), inspect_frame(orjson.dumps(body).decode())
            )
    report = backfill_in_process(simulator, data_dir)
    assert (report.already_captured, report.logged) == (1, 3)
    fetched = Counter(r.conversation_id for r in simulator.sim.rest_requests if r.kind == "get")
    assert fetched[bare] == 1 and whole not in fetched


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
    processing = simulator.sim.account.of_agent(AGENT, "processing")
    assert len(processing) == 2 and all(c.gets == 0 for c in processing)


# -- throttling and the concurrency bound ----------------------------------------------------


@account(conversations=60, processing=0, rest_latency=0.02)
def test_concurrency_bound_is_never_exceeded(simulator: SimulatorThread, data_dir: Path) -> None:
    report = backfill_in_process(simulator, data_dir, concurrency=3, page_size=20)
    assert (report.logged, report.errors) == (60, 0)
    assert simulator.sim.rest_max_in_flight == 3
    assert simulator.sim.rest_throttled == 0


@pytest.mark.parametrize(
    ("simulator", "concurrency"),
    [
        (
            {
                "account": AccountSpec(conversations=40, processing=0),
                "rest_latency": 0.02,
                "rest_max_concurrency": 2,
            },
            4,
        ),
        (
            {
                "account": AccountSpec(conversations=150, processing=0),
                "rest_latency": 0.01,
                "rest_max_concurrency": 3,
            },
            12,
        ),
    ],
    indirect=["simulator"],
)
def test_too_many_concurrent_requests_teaches_the_limit(
    simulator: SimulatorThread, data_dir: Path, concurrency: int
) -> None:
    sim = simulator.sim
    limit = sim.rest.max_concurrency
    assert limit is not None and sim.account is not None
    report = backfill_in_process(simulator, data_dir, concurrency=concurrency)
    assert (report.logged, report.errors) == (sim.account.spec.conversations, 0)
    assert Counter(line.conversation_id for line in rest_lines(data_dir)) == Counter(finished(simulator))
    # Every 429 is counted, the last one included.
    assert report.throttled == sim.rest_throttled > 0
    # The first burst above the limit is refused, then a probe now and then;
    # not a retry for every 429 that comes back.
    refused = Counter(r.conversation_id for r in sim.rest_requests if r.status == 429)
    assert sum(refused.values()) <= (concurrency - limit) + 4, refused
    assert max(refused.values()) <= 2, refused  # nobody starves
    # Only refused requests ever went above the limit.
    assert sim.rest_max_in_flight <= limit + 1


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
    report = backfill_in_process(simulator, data_dir, concurrency=2)
    assert report.errors == 0
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


@account(conversations=6, processing=0)
def test_system_busy_backs_off_at_least_the_floor(simulator: SimulatorThread, data_dir: Path) -> None:
    sim = simulator.sim
    simulator.run(_append_fault(sim, RestFault("system_busy", on="get")))
    simulator.run(_append_fault(sim, RestFault("system_busy", retry_after=0.1, on="get")))
    # The first backoff of a jittered series can be near zero; a short initial delay makes it so.
    retry = RetryPolicy(initial_delay=0.01)  # and the default floor, 0.5 s
    report = backfill_in_process(simulator, data_dir, concurrency=1, retry=retry)
    assert (report.logged, report.errors, report.throttled) == (6, 0, 2)
    busy = [r for r in sim.rest_requests if r.detail_status == "system_busy"]
    assert len(busy) == 2
    for record in busy:
        retried = next(
            r for r in sim.rest_requests[record.index :] if r.conversation_id == record.conversation_id
        )
        assert record.answered_at is not None
        assert retried.arrived_at - record.answered_at >= 0.5, record


# -- refusals --------------------------------------------------------------------------------


@account(conversations=3)
def test_forbidden_exits_2(simulator: SimulatorThread, data_dir: Path) -> None:
    simulator.run(_append_fault(simulator.sim, RestFault("missing_permissions", http_status=403, on="list")))
    with pytest.raises(AuthError, match="403") as refused:
        backfill_in_process(simulator, data_dir)
    assert refused.value.exit_code == 2


async def _append_fault(sim: Simulator, fault: RestFault) -> None:
    sim.rest_faults.append(fault)
