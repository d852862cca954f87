"""End to end: the real commands fill the log from REST and webhooks, ``capture project`` gives one row per turn."""

from __future__ import annotations

import signal
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from ingest.errors import CaptureError, ProjectionError
from ingest.log.reader import iter_log
from ingest.log.writer import events_dir
from ingest.simulator import (
    AccountSpec,
    Delivery,
    DeliveryFactory,
    Scenario,
    SimulatorThread,
    send,
    send_many,
)
from projections import iter_rows
from projections.duckdb_views import open_analytics, run_query
from tests.conftest import listening_port
from tests.e2e.commands import TIMEOUT, assert_children_never_saw, capture, free_port, running


KEY = "sk_sources_0123456789"
SECRET = "wsec_sources_0123456789"
AGENT = "agent_demo"


def backfill(sim: SimulatorThread, data_dir: Path, *args: str) -> None:
    done = capture(
        "backfill", "--agent-id", AGENT, "--base-url", sim.http_url, "--data-dir", str(data_dir), *args,
        ELEVENLABS_API_KEY=KEY,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def deliver(sim: SimulatorThread, data_dir: Path, bodies: list[bytes]) -> None:
    """Run ``capture webhook``, post each body as a signed post_call_transcription, stop it."""
    with running(
        "webhook", "--port", "0", "--data-dir", str(data_dir), ELEVENLABS_WEBHOOK_SECRET=SECRET
    ) as proc:
        port = listening_port(proc, TIMEOUT)
        factory = DeliveryFactory(SECRET, agent_id=AGENT)
        deliveries = [
            factory.transcription(data=orjson.loads(body), encoding="pretty" if n == 1 else None)
            for n, body in enumerate(bodies)
        ]
        url = f"http://127.0.0.1:{port}/webhooks/elevenlabs"
        assert sim.run(send_many(url, deliveries, concurrency=2), TIMEOUT) == [200] * len(deliveries)


def project(data_dir: Path) -> list[tuple[Any, ...]]:
    done = capture("project", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    return list(iter_rows(data_dir / "whatsapp_storage.db"))


def call_time(start: int, offset: float) -> str:
    return datetime.fromtimestamp(start + offset, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="POSIX signals")
def test_backfill_and_webhooks_give_each_turn_once(data_dir: Path) -> None:
    account = AccountSpec(conversations=8, processing=0, failed_every=4, escaped_every=3, pretty_every=5)
    with SimulatorThread(api_key=KEY, account=account) as sim:
        assert sim.sim.account is not None
        finished = sim.sim.account.of_agent(AGENT, "done", "failed")
        hooked = finished[::2]
        # Webhooks first: the backfill then skips those conversations, and --refresh fetches them too.
        deliver(sim, data_dir, [sim.sim.account.body(c.conversation_id) for c in hooked])
        backfill(sim, data_dir)
        backfill(sim, data_dir, "--refresh")
        expected = []
        for conversation in finished:
            if conversation.status != "done":
                continue  # a failed conversation's body holds only the agent's first message
            said: Counter[str] = Counter()
            for entry in conversation.user_entries():
                said[entry["message"]] += 1
                sources = '["rest","webhook"]' if conversation in hooked else '["rest"]'
                kind = "user_message" if entry["source_medium"] == "text" else "user_transcript"
                when = call_time(conversation.start_unix, entry["time_in_call_secs"])
                expected.append(
                    (
                        conversation.conversation_id,
                        entry["message"],
                        said[entry["message"]],
                        kind,
                        when,
                        sources,
                    )
                )
        assert expected and any(e[5] == '["rest","webhook"]' for e in expected)

        def turns(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
            seen: Counter[tuple[str, str]] = Counter()
            found = []
            for row in rows:
                seen[row[3], row[5]] += 1
                found.append((row[3], row[5], seen[row[3], row[5]], row[2], row[6], row[8]))
            return sorted(found)

        rows = project(data_dir)
        assert turns(rows) == sorted(expected)
        assert [row[4] for row in rows] == [
            sim.sim.account[row[3]].user_id for row in rows
        ]  # the body's user_id
        # A delivery received again and a second refresh change no turn.
        replayed = next(c for c in hooked if c.status == "done").conversation_id
        deliver(sim, data_dir, [sim.sim.account.body(replayed)])
        backfill(sim, data_dir, "--refresh")
        again = project(data_dir)
    assert len(again) == len(rows)
    assert [(r[0], r[1], r[6], r[8]) for r in again] == [(r[0], r[1], r[6], r[8]) for r in rows]
    sightings = Counter(
        tuple(s[0] for s in orjson.loads(r[7])["sightings"]) for r in again if r[3] == replayed
    )
    assert set(sightings) == {("webhook", "rest", "webhook", "rest")}  # every copy is on its row
    assert {line.source for line in iter_log(events_dir(data_dir))} == {"rest", "webhook"}
    conn = open_analytics(data_dir)
    try:
        view = list(run_query(conn, "SELECT * FROM user_texts ORDER BY id").rows)
    finally:
        conn.close()
    assert view == again


async def post(url: str, delivery: Delivery) -> int:
    async with aiohttp.ClientSession() as session:
        return await send(session, url, delivery)


def read_rows(db: Path) -> list[tuple[Any, ...]]:
    try:
        return list(iter_rows(db))
    except ProjectionError:
        return []  # not created yet


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="POSIX signals")
def test_one_ingest_process_projects_every_source_live(data_dir: Path) -> None:
    """capture ingest with the agent socket, the monitor, REST polling and webhooks: each turn once, live.

    The monitored conversation's typed turns reach the monitor as transcripts with
    an event id; REST later says they were typed: they still end up one row each.
    """
    account = AccountSpec(
        conversations=3,
        in_progress=1,
        processing=0,
        failed_every=0,
        done_after_polls=None,
        done_after_seconds=0.5,
    )
    scenario = Scenario(end="wait", user_turns=["I need help with my bill.", "Thanks!"])
    port = free_port()
    db = data_dir / "whatsapp_storage.db"
    with SimulatorThread(api_key=KEY, account=account, default=scenario, ping_interval=0.1) as sim:
        assert sim.sim.account is not None
        conversations = sim.sim.account.of_agent(AGENT)
        [watched] = [c for c in conversations if c.status == "in-progress"]
        delivered = next(c for c in conversations if c is not watched)
        with running(
            "ingest", "--agent-id", AGENT, "--base-url", sim.http_url, "--data-dir", str(data_dir),
            "--webhook-port", str(port), "--backfill-follow", "--backfill-interval", "1", "--monitor",
            ELEVENLABS_API_KEY=KEY, ELEVENLABS_WEBHOOK_SECRET=SECRET,
        ) as proc:  # fmt: skip
            url = f"http://127.0.0.1:{port}/webhooks/elevenlabs"
            delivery = DeliveryFactory(SECRET, agent_id=AGENT).transcription(
                data=orjson.loads(sim.sim.account.body(delivered.conversation_id))
            )
            deadline = time.monotonic() + TIMEOUT
            while True:  # until the receiver listens
                try:
                    assert sim.run(post(url, delivery), TIMEOUT) == 200
                    break
                except CaptureError:
                    assert proc.poll() is None and time.monotonic() < deadline, "the receiver never listened"
                    time.sleep(0.05)
            expected = {(c.conversation_id, e["message"]) for c in conversations for e in c.user_entries()}

            def complete() -> bool:
                rows = read_rows(db)
                seen = {(r[3], r[5]) for r in rows}
                watched_rows = [r for r in rows if r[3] == watched.conversation_id]
                live = [r for r in rows if r[8] == '["agent_ws"]']
                return (
                    expected <= seen
                    and len(live) == 2
                    and bool(watched_rows)
                    and all("rest" in r[8] and "monitor" in r[8] for r in watched_rows)
                )

            while not complete():
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, f"rows so far: {read_rows(db)}"
                time.sleep(0.05)
            assert_children_never_saw(proc, KEY, SECRET)
    rows = read_rows(db)
    kinds = {"audio": "user_transcript", "text": "user_message"}
    said = Counter(
        (c.conversation_id, e["message"], kinds[e["source_medium"]])
        for c in conversations
        for e in c.user_entries()
    )
    assert (
        Counter((r[3], r[5], r[2]) for r in rows if r[3] in {c.conversation_id for c in conversations})
        == said
    )
    assert {r[8] for r in rows if r[3] == watched.conversation_id} == {'["monitor","rest"]'}
    assert {r[8] for r in rows if r[3] == delivered.conversation_id} == {'["rest","webhook"]'}
    assert sorted(r[5] for r in rows if r[8] == '["agent_ws"]') == sorted(scenario.user_turns)
    assert len(rows) == sum(said.values()) + len(scenario.user_turns)
