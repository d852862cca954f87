"""One REST client for the backfill and the monitor: its throttling seen from both, on loopback."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from ingest.log.writer import LogWriter
from ingest.simulator import RestFault, SimulatorThread
from ingest.sources.monitor import MonitorConfig, run_monitor
from ingest.sources.rest.backfill import BackfillConfig, run_backfill
from ingest.sources.rest.client import RestClient, open_session
from ingest.sources.rest.policy import RetryPolicy
from tests.conftest import TIMEOUT_FACTOR
from tests.ingest.sources.rest.test_backfill import AGENT, KEY, account, finished, rest_lines
from tests.ingest.sources.test_monitor import monitor_lines


TIMEOUT = 20 * TIMEOUT_FACTOR
LIVE = {"in_progress": 2, "live_turn_gap": 0.05, "user_turns": (3, 3)}


@account(conversations=4, processing=0, **LIVE)
def test_a_throttled_poll_waits_then_the_monitor_attaches(simulator: SimulatorThread, data_dir: Path) -> None:
    sim = simulator.sim
    faults = [
        # Refused with none of ours in flight: another tool of the account holds the slots.
        RestFault("too_many_concurrent_requests", on="list"),
        RestFault("too_many_concurrent_requests", on="list"),
        RestFault("system_busy", on="list"),
    ]

    async def script() -> None:
        sim.rest_faults.extend(faults)

    simulator.run(script())
    # The first backoff of a jittered series can be near zero; a short initial delay makes it so.
    retry = RetryPolicy(initial_delay=0.01, slot_wait=0.3)
    config = MonitorConfig(
        AGENT, simulator.http_url, KEY, poll_interval=0.05, max_conversations=2, retry=retry
    )

    async def main() -> None:
        with LogWriter.open(data_dir, command="test") as writer:
            report = await asyncio.wait_for(run_monitor(writer, config, asyncio.Event()), TIMEOUT)
        assert (report.attachments, report.conversations) == (2, 2)

    asyncio.run(main())
    assert monitor_lines(data_dir)
    lists = [r for r in sim.rest_requests if r.kind == "list"]
    assert [r.detail_status for r in lists[:4]] == [*(f.status for f in faults), None]
    for refused, retried in zip(lists[:3], lists[1:4], strict=True):
        assert refused.answered_at is not None
        waited = retried.arrived_at - refused.answered_at
        # Slot: slot_wait, nobody of ours will free one; busy: at least the floor (0.5 s).
        floor = 0.3 if refused.detail_status == "too_many_concurrent_requests" else 0.5
        assert waited >= floor, (refused, waited)


@account(conversations=40, processing=0, rest_latency=0.02, rest_max_concurrency=2, **LIVE)
def test_a_client_shared_by_the_backfill_and_the_monitor_learns_the_limit_once(
    simulator: SimulatorThread, data_dir: Path
) -> None:
    sim = simulator.sim
    monitoring = MonitorConfig(AGENT, simulator.http_url, KEY, poll_interval=0.02, max_conversations=2)
    backfilling = BackfillConfig(AGENT, simulator.http_url, KEY, wait_pending=0)

    async def main() -> None:
        stop = asyncio.Event()
        async with open_session() as session:
            rest = RestClient(session, KEY, concurrency=4, stop=stop)
            with LogWriter.open(data_dir, command="test") as writer:
                backfill, monitor = await asyncio.wait_for(
                    asyncio.gather(
                        run_backfill(writer, backfilling, stop, rest=rest),
                        run_monitor(writer, monitoring, stop, rest=rest),
                    ),
                    TIMEOUT,
                )
        assert (backfill.logged, backfill.unfinished, backfill.errors) == (38, 2, 0)
        assert (monitor.attachments, monitor.conversations) == (2, 2)
        assert backfill.throttled == rest.stats.throttled == sim.rest_throttled > 0
        assert rest.stats.limit <= 3

    asyncio.run(main())
    assert Counter(line.conversation_id for line in rest_lines(data_dir)) == Counter(finished(simulator))
    refused = Counter(r.conversation_id or "list" for r in sim.rest_requests if r.status == 429)
    assert sum(refused.values()) <= (4 - 2) + 4, refused
