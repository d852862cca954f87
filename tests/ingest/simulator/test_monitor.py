"""The monitor socket on loopback: connected, the history replay, history_complete, then live events."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from ingest.simulator import HISTORY_SIZE, AccountSpec, MonitorRecord, SimConversation, Simulator
from tests.ingest.simulator.peer import Peer, of_kind, peer, run
from tests.ingest.simulator.reference import asyncapi_errors


KEY = "sk_monitor"


def live_spec(**options: Any) -> AccountSpec:
    """An account whose newest conversation is live."""
    return AccountSpec(**({"conversations": 2, "in_progress": 1, "processing": 0} | options))


def monitor_url(sim: Simulator, conversation_id: str) -> str:
    return f"{sim.ws_url}/v1/convai/conversations/{conversation_id}/monitor"


def live_id(sim: Simulator) -> str:
    assert sim.account is not None
    return sim.account.of_agent("agent_demo", "in-progress")[0].conversation_id


def spoken(messages: list[dict[str, Any]]) -> list[tuple[str, int]]:
    events = [m["user_transcription_event"] for m in messages if m["type"] == "user_transcript"]
    return [(e["user_transcript"], e["event_id"]) for e in events]


def attach(sim: Simulator, conversation_id: str, key: str | None = KEY) -> Any:
    headers = {"xi-api-key": key} if key else {}
    return peer(monitor_url(sim, conversation_id), None, pong=False, additional_headers=headers)


async def watch(spec: AccountSpec) -> tuple[Peer, SimConversation, MonitorRecord]:
    """Monitor the live conversation of ``spec`` from the start to its end (close 1000)."""
    async with Simulator(api_key=KEY, account=spec) as sim:
        assert sim.account is not None
        conversation_id = live_id(sim)
        async with attach(sim, conversation_id) as p:
            assert await p.until_closed() == (1000, "")
        [record] = sim.monitors
        return p, sim.account[conversation_id], record


def test_a_session_is_connected_history_history_complete_then_live() -> None:
    p, conversation, record = run(watch(live_spec(conversations=3, live_turn_gap=0.01)))
    kinds = [m["type"] for m in p.messages]
    assert kinds[:2] == ["connected", "history_complete"]  # nothing had happened yet
    live = p.messages[2:]
    assert [asyncapi_errors(m) for m in live] == [[]] * len(live)
    assert {m["type"] for m in live} == {"user_transcript", "agent_response", "audio"}
    assert spoken(live) == [(e["message"], e["source_event_id"]) for e in conversation.user_entries()]
    assert (record.http_status, record.close_code, record.history_sent) == (101, 1000, 0)
    assert record.frames_sent == len(p.frames) and record.audio_sent == kinds.count("audio")
    assert conversation.status == "processing"


def test_what_happened_before_attaching_is_replayed_as_history() -> None:
    p, conversation, record = run(watch(live_spec(live_turn_gap=0.01, live_history=3, user_turns=(3, 3))))
    complete = [m["type"] for m in p.messages].index("history_complete")
    # Three entries had been said (agent, user, agent): their text, no audio.
    history = p.messages[1:complete]
    assert [m["type"] for m in history] == ["agent_response", "user_transcript", "agent_response"]
    assert record.history_sent == 3
    assert spoken(p.messages) == [(e["message"], e["source_event_id"]) for e in conversation.user_entries()]


def test_a_later_monitor_gets_the_last_events_then_the_same_live_tail() -> None:
    async def main() -> None:
        spec = live_spec(live_turn_gap=0.005, live_history=110, user_turns=(60, 60))
        async with Simulator(api_key=KEY, account=spec) as sim:
            conversation_id = live_id(sim)
            async with attach(sim, conversation_id) as first:
                await first.until(of_kind("history_complete"))
                await first.until(of_kind("user_transcript"))  # a live one
                async with attach(sim, conversation_id) as second:
                    await asyncio.gather(first.until_closed(), second.until_closed())
            one, two = sim.monitors
        assert one.history_sent == HISTORY_SIZE  # 110 entries had been said: the last 100 are replayed
        assert two.history_sent == HISTORY_SIZE
        complete = [m["type"] for m in second.messages].index("history_complete")
        replayed = [orjson.dumps(m) for m in second.messages[1:complete]]
        control = ("audio", "connected", "history_complete")
        seen_by_first = [orjson.dumps(m) for m in first.messages if m["type"] not in control]
        tail = seen_by_first[seen_by_first.index(replayed[0]) :]
        assert tail[: len(replayed)] == replayed
        assert second.messages[complete + 1 :] == first.messages[-len(second.messages[complete + 1 :]) :]
        assert one.close_code == two.close_code == 1000

    run(main())


def test_commands_are_recorded_and_a_client_close_ends_the_session() -> None:
    async def main() -> None:
        spec = live_spec(live_turn_gap=1.0, user_turns=(5, 5))
        async with Simulator(api_key=KEY, account=spec) as sim:
            async with attach(sim, live_id(sim)) as p:
                await p.until(of_kind("history_complete"))
                await p.ws.send('{"type":"send_human_message","text":"Hello, a human here."}')
                await sim.wait_for(lambda s: bool(s.monitors[0].commands), 5)
            await sim.wait_for(lambda s: s.monitors[0].closed_at is not None, 5)
            [record] = sim.monitors
        assert record.commands == ["send_human_message"]
        assert record.close_code == 1000

    run(main())


@pytest.mark.parametrize(
    ("options", "key", "status"),
    [
        ({}, "sk_wrong", 401),
        ({}, None, 401),
        ({"monitor_enabled": False}, KEY, 403),
    ],
)
def test_refused_handshakes(options: dict[str, Any], key: str | None, status: int) -> None:
    async def main() -> None:
        spec = live_spec()
        async with Simulator(api_key=KEY, account=spec, **options) as sim:
            headers = {"xi-api-key": key} if key else {}
            with pytest.raises(InvalidStatus) as refused:
                await connect(monitor_url(sim, live_id(sim)), additional_headers=headers)
            assert refused.value.response.status_code == status
            [record] = sim.monitors
            assert (record.http_status, record.opened_at) == (status, None) and record.closed_at is not None

    run(main())


def test_a_finished_conversation_cannot_be_monitored() -> None:
    async def main() -> None:
        async with Simulator(api_key=KEY, account=AccountSpec(conversations=2, processing=0)) as sim:
            assert sim.account is not None
            done = sim.account.conversations[0].conversation_id
            with pytest.raises(InvalidStatus) as refused:
                await connect(monitor_url(sim, done), additional_headers={"xi-api-key": KEY})
            assert refused.value.response.status_code == 404

    run(main())


def test_disabled_monitoring_can_close_1008_instead() -> None:
    async def main() -> None:
        spec = live_spec()
        async with Simulator(
            api_key=KEY, account=spec, monitor_enabled=False, monitor_refusal="close_1008"
        ) as sim:
            async with attach(sim, live_id(sim)) as p:
                code, reason = await p.until_closed()
            assert (code, p.frames) == (1008, [])
            assert reason is not None and "not enabled" in reason
            assert sim.monitors[0].close_code == 1008

    run(main())


def test_stop_closes_monitors_1001() -> None:
    async def main() -> None:
        spec = live_spec(live_turn_gap=1.0)
        sim = Simulator(api_key=KEY, account=spec)
        await sim.start()
        async with attach(sim, live_id(sim)) as p:
            await p.until(of_kind("history_complete"))
            await sim.stop()
            assert (await Peer.until_closed(p))[0] == 1001
        assert sim.monitors[0].close_code == 1001

    run(main())
