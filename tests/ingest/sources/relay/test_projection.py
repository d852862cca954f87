"""Relay turns become rows: typed and spoken, ``user_id`` from the client's init, one row per turn with REST and webhook."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect

from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.writer import LogWriter
from ingest.simulator import Scenario, Simulator
from projections import iter_rows, project
from projections.duckdb_views import open_analytics, run_query
from tests.conftest import TIMEOUT_FACTOR
from tests.ingest.sources.relay.helpers import AGENT, config, logged, relaying


SPOKEN = ["I need help with my bill.", "Can you check my last invoice?"]
TYPED = ["yes", "yes", "Olá"]


async def converse(data_dir: Path) -> None:
    """One conversation through the relay: two spoken turns (the simulator's), then three typed lines."""
    scenario = Scenario(name="mixed", user_turns=SPOKEN, extra_events=False, end="wait")
    async with (
        Simulator(default=scenario, ping_interval=None) as sim,
        relaying(data_dir, config(sim.http_url, api_key=None)) as relay,
    ):
        async with connect(relay.conversation_url(source="python_sdk")) as ws:
            init = {
                "type": "conversation_initiation_client_data",
                "conversation_config_override": {"conversation": {"text_only": True}},
                "user_id": "user-7",
            }
            await ws.send(orjson.dumps(init).decode())
            replies: list[str] = []

            async def reply() -> None:
                while True:
                    message = orjson.loads(await asyncio.wait_for(ws.recv(), 10 * TIMEOUT_FACTOR))
                    if message["type"] == "agent_response":
                        replies.append(message["agent_response_event"]["agent_response"])
                        return

            for _ in range(1 + len(SPOKEN)):  # the first message, then a reply per spoken turn
                await reply()
            for text in TYPED:
                await ws.send(orjson.dumps({"type": "user_message", "text": text}).decode())
                await reply()
            assert replies[-1] == "You said: Olá"


def transcript_body(conversation_id: str, spoken: list[tuple[str, int]]) -> dict[str, Any]:
    """The GET-conversation body the platform would give for that conversation."""
    entries: list[dict[str, Any]] = [{"role": "agent", "message": "Hello!", "time_in_call_secs": 0}]
    for i, (text, event_id) in enumerate(spoken):
        entries.append(
            {"role": "user", "message": text, "time_in_call_secs": 2 + i, "source_medium": "audio",
             "source_event_id": event_id}
        )  # fmt: skip
    for i, text in enumerate(TYPED):
        entries.append(
            {"role": "user", "message": text, "time_in_call_secs": 10 + i, "source_medium": "text"}
        )
    return {
        "agent_id": AGENT,
        "conversation_id": conversation_id,
        "status": "done",
        "user_id": "user-7",
        "transcript": entries,
        "metadata": {"start_time_unix_secs": 1_795_607_999, "call_duration_secs": 30},
    }


def test_relay_turns_are_one_row_each_with_their_rest_and_webhook_sightings(data_dir: Path) -> None:
    asyncio.run(asyncio.wait_for(converse(data_dir), 60 * TIMEOUT_FACTOR))
    lines = [line for line in logged(data_dir) if line.source == "relay"]
    conversation_id = lines[-1].conversation_id
    assert conversation_id is not None
    spoken = [
        (
            line.event["user_transcription_event"]["user_transcript"],
            line.event["user_transcription_event"]["event_id"],
        )
        for line in lines
        if line.type == "user_transcript" and line.event is not None
    ]
    assert [text for text, _ in spoken] == SPOKEN
    # The same conversation fetched from the REST API and delivered by webhook, as the platform would.
    body = transcript_body(conversation_id, spoken)
    with LogWriter.open(data_dir, command="test") as writer:
        writer.append(
            Origin("rest", "in", AGENT, uuid.uuid4().hex, conversation_id),
            inspect_frame(orjson.dumps(body).decode()),
        )
        delivery = {"type": "post_call_transcription", "event_timestamp": 1_795_608_100, "data": body}
        writer.append(
            Origin("webhook", "in", AGENT, uuid.uuid4().hex, conversation_id),
            inspect_frame(orjson.dumps(delivery).decode()),
        )

    project(data_dir, data_dir / "user.db")
    rows = list(iter_rows(data_dir / "user.db"))
    conn = open_analytics(data_dir, data_dir / "analytics.duckdb")
    try:
        assert list(run_query(conn, "SELECT * FROM user_texts ORDER BY id").rows) == rows
    finally:
        conn.close()
    # columns: id, dedup_key, kind, session_id, user_id, text, timestamp, metadata, sources, seq
    assert [(r[2], r[3], r[4], r[5], r[8]) for r in rows] == [
        ("user_transcript", conversation_id, "user-7", SPOKEN[0], '["relay","rest","webhook"]'),
        ("user_transcript", conversation_id, "user-7", SPOKEN[1], '["relay","rest","webhook"]'),
        ("user_message", conversation_id, "user-7", "yes", '["relay","rest","webhook"]'),
        ("user_message", conversation_id, "user-7", "yes", '["relay","rest","webhook"]'),
        ("user_message", conversation_id, "user-7", "Olá", '["relay","rest","webhook"]'),
    ]
    # The text and raw_event come from the relay's own line, spliced as it travelled.
    first = orjson.loads(rows[2][7])
    assert first["source"] == "relay" and first["raw_event"] == {"type": "user_message", "text": "yes"}
    assert [s[3] for s in first["sightings"]] == ["text", "text", "text"]
    assert [s[3] for s in orjson.loads(rows[0][7])["sightings"]] == ["audio", "audio", "audio"]
