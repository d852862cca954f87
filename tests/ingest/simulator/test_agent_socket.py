"""The agent socket on loopback: raw WebSocket clients and the official SDK against every scenario."""

from __future__ import annotations

import threading
import time
from typing import Any

import aiohttp
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ingest.simulator import (
    HUGE_TEXT_SIZE,
    MALFORMED_FRAMES,
    ConnectionRecord,
    Scenario,
    Simulator,
    SimulatorThread,
    scenario_from_name,
)
from tests.ingest.simulator.peer import (
    AUDIO_INIT,
    QUIET,
    SDK_STYLE_INIT,
    TEXT_INIT,
    WAIT,
    of_kind,
    only,
    parse,
    peer,
    run,
)
from tests.ingest.simulator.reference import ASYNCAPI_EVENTS, asyncapi_errors


# -- the conversation --------------------------------------------------------------------


def test_default_text_conversation() -> None:
    """Metadata first, then the script in text mode (chat parts, no audio), the extras, close 1000."""

    async def main() -> None:
        async with Simulator() as sim:
            async with peer(sim.conversation_url()) as p:
                first = parse(await p.next())
                code, _ = await p.until_closed()
            record = only(sim)

        assert first is not None and first["type"] == "conversation_initiation_metadata"
        event = first["conversation_initiation_metadata_event"]
        assert event["conversation_id"].startswith("conv_")
        assert event["conversation_id"] == record.conversation_id
        assert event["agent_output_audio_format"] == "pcm_16000"
        assert code == 1000
        assert (record.close_code, record.closed_by, record.http_status) == (1000, "server", 101)

        kinds = {m["type"] for m in p.messages}
        assert not kinds & {"audio", "user_message"}
        assert {
            "agent_chat_response_part",
            "vad_score",
            "interruption",
            "agent_response_correction",
            "context_usage",
            "agent_tool_response",
            "mcp_connection_status",
            "simulator_future_event",
        } <= kinds
        finals = [m["user_transcription_event"] for m in p.of_type("user_transcript")]
        assert [f["user_transcript"] for f in finals] == Scenario().user_turns
        assert [f["event_id"] for f in finals] == [2, 3]
        tentative = p.of_type("tentative_user_transcript")
        assert [t["tentative_user_transcription_event"]["event_id"] for t in tentative] == [2, 3]
        replies = [m["agent_response_event"]["agent_response"] for m in p.of_type("agent_response")]
        assert replies == [Scenario().first_message] + [f"You said: {t}" for t in Scenario().user_turns]
        parts = [
            m["text_response_part"]
            for m in p.of_type("agent_chat_response_part")
            if m["text_response_part"]["event_id"] == 2
        ]
        assert [part["type"] for part in parts][0] == "start" and parts[-1]["type"] == "stop"
        assert "".join(part["text"] for part in parts) == f"You said: {Scenario().user_turns[0]}"
        assert record.frames_sent == len(p.frames)

    run(main())


def test_audio_mode_sends_audio_with_alignment() -> None:
    """Without text_only, each agent reply is an agent_response plus audio frames; no chat parts."""

    async def main() -> None:
        async with Simulator(default=Scenario(user_turns=["hi"], extra_events=False)) as sim:
            async with peer(sim.conversation_url(), AUDIO_INIT) as p:
                await p.until_closed()
            record = only(sim)
        assert record.text_only is False
        assert not p.of_type("agent_chat_response_part")
        audio = [m["audio_event"] for m in p.of_type("audio")]
        assert len(audio) == 6
        assert {a["event_id"] for a in audio} == {1, 2}
        assert all(a["audio_base_64"] and a["alignment"]["chars"] for a in audio)

    run(main())


def test_user_message_is_answered_never_echoed() -> None:
    """A typed message gets "You said: …" (chat parts first) and never comes back as a transcript."""

    async def main() -> None:
        quiet = Scenario(name="quiet", first_message=None, user_turns=[], end="wait", idle_close_after=0.3)
        async with Simulator(default=quiet) as sim:
            async with peer(sim.conversation_url()) as p:
                await p.until(of_kind("conversation_initiation_metadata"))
                await p.ws.send('{"type":"user_message","text":"hello there"}')
                await p.ws.send('{"type":"user_activity"}')
                await p.ws.send('{"type":"contextual_update","text":"on the pricing page"}')
                reply = await p.until(of_kind("agent_response"))
                code, reason = await p.until_closed()
            record = only(sim)
        assert reply["agent_response_event"]["agent_response"] == "You said: hello there"
        assert not p.of_type("user_transcript")
        assert record.user_messages == ["hello there"]
        assert record.user_activities == 1
        assert record.contextual_updates == ["on the pricing page"]
        assert (code, reason) == (1000, "inactivity timeout")

    run(main())


@pytest.mark.parametrize(("init", "placement"), [(TEXT_INIT, "conversation"), (SDK_STYLE_INIT, "top_level")])
def test_both_text_only_placements_count(init: dict[str, Any], placement: str) -> None:
    async def main() -> ConnectionRecord:
        async with Simulator(default=Scenario(user_turns=["x"], extra_events=False)) as sim:
            async with peer(sim.conversation_url(), init) as p:
                await p.until_closed()
            assert p.of_type("agent_chat_response_part") and not p.of_type("audio")
            return only(sim)

    record = run(main())
    assert record.text_only is True
    assert record.text_only_placement == placement
    assert record.init == init


# -- keepalive ---------------------------------------------------------------------------


def test_pongs_are_recorded_and_ping_ms_follows() -> None:
    async def main() -> None:
        async with Simulator(default=QUIET, ping_interval=0.03, pong_deadline=1.0) as sim:
            async with peer(sim.conversation_url()) as p, p.pumping():
                await sim.wait_for(lambda s: len(s.connections[0].pongs) >= 3, 5)
                pings = [m["ping_event"] for m in p.of_type("ping")]
            await sim.wait_for(lambda s: only(s).closed, 5)
            record = only(sim)
        assert pings[0] == {"event_id": 1, "ping_ms": None}
        assert isinstance(pings[1]["ping_ms"], int)
        assert [event_id for event_id, _ in record.pongs][:3] == [1, 2, 3]
        assert all(0 <= rtt < 1.0 for _, rtt in record.pongs)
        assert (record.close_code, record.closed_by) == (1000, "client")

    run(main())


def test_missing_pong_closes_1002_within_the_deadline() -> None:
    async def main() -> None:
        async with Simulator(default=QUIET, ping_interval=0.05, pong_deadline=0.3) as sim:
            async with peer(sim.conversation_url(), pong=False) as p:
                await p.until(of_kind("conversation_initiation_metadata"))
                started = time.monotonic()
                code, reason = await p.until_closed(timeout=3)
                elapsed = time.monotonic() - started
            record = only(sim)
        assert (code, reason) == (1002, "pong timeout")
        assert 0.3 <= elapsed < 0.05 + 0.3 + 0.5
        assert (record.close_code, record.close_reason, record.closed_by) == (1002, "pong timeout", "server")
        assert record.pongs == []
        assert record.pings_sent >= 1

    run(main())


def test_every_frame_of_a_conversation_is_shaped_per_the_asyncapi() -> None:
    """In text mode and in audio mode; the one type from the future aside."""

    async def main(init: dict[str, Any]) -> list[dict[str, Any]]:
        async with Simulator() as sim, peer(sim.conversation_url(), init) as p:
            await p.ws.send('{"type":"user_message","text":"typed"}')
            await p.until_closed()
        return p.messages

    for init in (TEXT_INIT, AUDIO_INIT):
        frames = [m for m in run(main(init)) if m["type"] != "simulator_future_event"]
        assert frames and [asyncapi_errors(frame) for frame in frames] == [[]] * len(frames)


def test_every_event_sends_each_server_type_of_the_asyncapi() -> None:
    async def main() -> tuple[list[dict[str, Any]], ConnectionRecord]:
        async with Simulator(default=scenario_from_name("every_event")) as sim:
            async with peer(sim.conversation_url(), AUDIO_INIT) as p:
                tool_call = await p.until(of_kind("client_tool_call"))
                result = {
                    "type": "client_tool_result",
                    "tool_call_id": tool_call["client_tool_call"]["tool_call_id"],
                }
                await p.ws.send(orjson.dumps(result | {"result": "opened", "is_error": False}).decode())
                await p.until_closed()
            return p.messages, only(sim)

    messages, record = run(main())
    kinds = {m["type"] for m in messages}
    # Chat parts come in text mode instead of audio (above); errors only before a failing close.
    assert set(ASYNCAPI_EVENTS) - {"error", "agent_chat_response_part"} <= kinds
    assert [m for m in messages if m["type"] != "simulator_future_event" and asyncapi_errors(m)] == []
    assert record.other_types == ["client_tool_result"]
    assert record.close_code == 1000


def test_a_client_that_never_answers_pings_fails_the_default_conversation() -> None:
    """The conversation ends with a ping; unanswered, the server closes 1002 instead of 1000."""

    async def main() -> tuple[int | None, str | None, float, ConnectionRecord]:
        async with Simulator(ping_interval=None, pong_deadline=0.3) as sim:
            async with peer(sim.conversation_url(), pong=False) as p:
                await p.until(of_kind("ping"))
                pinged = time.monotonic()
                code, reason = await p.until_closed()
                waited = time.monotonic() - pinged
            return code, reason, waited, only(sim)

    code, reason, waited, record = run(main())
    assert (code, reason) == (1002, "pong timeout")
    assert waited >= 0.25  # the deadline was given its time
    assert (record.close_code, record.closed_by, record.pings_sent, record.pongs) == (1002, "server", 1, [])


def test_the_final_ping_is_answered_then_the_conversation_closes_1000() -> None:
    async def main() -> tuple[list[dict[str, Any]], ConnectionRecord]:
        async with Simulator(ping_interval=None) as sim:
            async with peer(sim.conversation_url()) as p:
                await p.until_closed()
            return p.messages, only(sim)

    messages, record = run(main())
    assert [m["type"] for m in messages][-1] == "ping"
    assert [event_id for event_id, _ in record.pongs] == [1]
    assert (record.close_code, record.closed_by) == (1000, "server")


def test_no_init_frame_closes_1008() -> None:
    async def main() -> None:
        async with Simulator(default=QUIET, init_timeout=0.1) as sim:
            async with peer(sim.conversation_url(), init=None) as p:
                assert await p.until_closed() == (1008, "no conversation_initiation_client_data")
            assert p.frames == []

    run(main())


def test_a_plain_http_request_is_told_to_upgrade() -> None:
    async def main() -> None:
        async with Simulator() as sim, aiohttp.ClientSession() as http:
            async with http.get(f"{sim.http_url}/v1/convai/conversation?agent_id=agent_demo") as response:
                assert (response.status, response.headers["Upgrade"]) == (426, "websocket")
            assert sim.connections == []  # not a handshake attempt: no scenario used

    run(main())


# -- faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [503, 401, 403, 404])
def test_http_fault_refuses_then_script_moves_on(status: int) -> None:
    """A scripted refusal applies to one attempt; the next attempt gets the next scenario."""

    async def main() -> None:
        fault = f"http_{status}"
        async with Simulator(script=[scenario_from_name(fault)], default=QUIET) as sim:
            before = time.monotonic()
            with pytest.raises(InvalidStatus) as refused:
                await connect(sim.conversation_url())
            assert refused.value.response.status_code == status
            async with peer(sim.conversation_url()) as p:
                await p.until(of_kind("conversation_initiation_metadata"))
            first, second = sim.connections
        assert (first.scenario, first.http_status, first.opened_at) == (fault, status, None)
        assert before <= first.attempted_at <= second.attempted_at
        assert (second.scenario, second.http_status) == ("quiet", 101)

    run(main())


def test_accept_close() -> None:
    async def main() -> None:
        async with Simulator(default=scenario_from_name("accept_close")) as sim:
            async with peer(sim.conversation_url(), init=None) as p:
                code, _ = await p.until_closed()
            record = only(sim)
        assert code == 1000
        assert p.frames == []
        assert (record.close_code, record.closed_by, record.init, record.conversation_id) == (
            1000,
            "server",
            None,
            None,
        )

    run(main())


def test_close_3000_before_metadata() -> None:
    async def main() -> None:
        async with Simulator(default=scenario_from_name("close_3000")) as sim:
            async with peer(sim.conversation_url(), init=None) as p:
                assert await p.until_closed() == (3000, "Request error")
        assert p.frames == []

    run(main())


@pytest.mark.parametrize(("fault", "code"), [("close_1011", 1011), ("close_1002", 1002)])
def test_close_after_metadata(fault: str, code: int) -> None:
    async def main() -> None:
        async with Simulator(default=scenario_from_name(fault)) as sim:
            async with peer(sim.conversation_url()) as p:
                received, _ = await p.until_closed()
            record = only(sim)
        assert received == code
        assert [m["type"] for m in p.messages] == ["conversation_initiation_metadata"]
        assert (record.close_code, record.closed_by) == (code, "server")

    run(main())


def test_override_error() -> None:
    async def main() -> None:
        async with Simulator(default=scenario_from_name("override_error")) as sim:
            async with peer(sim.conversation_url()) as p:
                code, reason = await p.until_closed()
        assert [m["type"] for m in p.messages] == ["error"]
        event = p.messages[0]["error_event"]
        assert (event["code"], event["error_type"]) == (1008, "override_error")
        assert "text_only" in event["message"]
        assert code == 1008 and reason == event["message"]

    run(main())


def test_drop_aborts_without_close_frame() -> None:
    async def main() -> None:
        async with Simulator(default=scenario_from_name("drop")) as sim:
            async with peer(sim.conversation_url()) as p:
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await p.next()
            await sim.wait_for(lambda s: only(s).closed, 5)
            record = only(sim)
        assert closed.value.rcvd is None  # no close frame: an abnormal 1006 closure
        assert p.ws.close_code == 1006
        kinds = [m["type"] for m in p.messages if m["type"] != "ping"]
        assert kinds[0] == "conversation_initiation_metadata"
        assert "agent_response" in kinds
        assert kinds[-2:] == ["tentative_user_transcript", "user_transcript"]
        assert (record.close_code, record.closed_by) == (1006, "server")

    run(main())


def test_malformed_frames_then_normal() -> None:
    async def main() -> None:
        async with Simulator(default=scenario_from_name("malformed")) as sim:
            async with peer(sim.conversation_url()) as p:
                await p.until_closed()
        assert p.frames[1 : 1 + len(MALFORMED_FRAMES)] == list(MALFORMED_FRAMES)
        escaped = p.frames[4]
        assert isinstance(escaped, str) and "\\u00e1 \\ud83d\\ude00" in escaped and escaped.isascii()
        assert orjson.loads(escaped)["user_transcription_event"]["user_transcript"] == "Olá 😀"
        assert "\n" in p.frames[3]
        assert p.of_type("agent_response")  # and then the normal conversation
        assert only(sim).close_code == 1000

    run(main())


def test_huge_frame_then_normal() -> None:
    async def main() -> None:
        async with Simulator(default=scenario_from_name("huge")) as sim:
            async with peer(sim.conversation_url()) as p:
                await p.until_closed(timeout=10)
        huge = p.frames[1]
        assert isinstance(huge, str) and len(huge) > HUGE_TEXT_SIZE
        event = orjson.loads(huge)["user_transcription_event"]
        assert len(event["user_transcript"]) == HUGE_TEXT_SIZE
        assert p.of_type("agent_response")
        assert only(sim).close_code == 1000

    run(main())


def test_flood() -> None:
    async def main() -> None:
        flood = Scenario(name="flood", flood=2000, flood_ping_every=500)
        async with Simulator(default=flood, ping_interval=None) as sim:
            async with peer(sim.conversation_url(), pong=False) as p:
                code, _ = await p.until_closed()
            record = only(sim)
        assert code == 1000
        transcripts = [m["user_transcription_event"] for m in p.of_type("user_transcript")]
        assert transcripts == [{"user_transcript": f"flood {i}", "event_id": i} for i in range(1, 2001)]
        assert [m["ping_event"]["event_id"] for m in p.of_type("ping")] == [1, 2, 3, 4]
        assert record.pings_sent == 4
        assert record.frames_sent == 1 + 2000 + 4

    run(main())


# -- the official SDK ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")
@pytest.mark.parametrize("requires_auth", [False, True])
def test_official_sdk_holds_a_text_conversation(requires_auth: bool) -> None:
    """elevenlabs.Conversation without an audio interface talks text with the simulator."""
    from elevenlabs.client import ElevenLabs
    from elevenlabs.conversational_ai.conversation import Conversation

    replies: list[str] = []
    answered = threading.Event()

    def on_agent_response(text: str) -> None:
        replies.append(text)
        if text == "You said: hello":
            answered.set()

    api_key = "sdk-key" if requires_auth else None
    with SimulatorThread(default=QUIET, ping_interval=0.05, api_key=api_key) as st:
        client = ElevenLabs(api_key=api_key or "x", base_url=st.http_url)
        conversation: Any = Conversation(
            client, "agent_demo", requires_auth=requires_auth, callback_agent_response=on_agent_response
        )
        conversation.start_session()
        try:
            # The SDK sends its init right after opening; it can send messages from then on.
            st.wait_for(lambda s: bool(s.connections) and s.connections[0].init is not None, 5)
            conversation.send_user_message("hello")
            assert answered.wait(5), replies
            st.wait_for(lambda s: len(s.connections[0].pongs) >= 1, 5)
        finally:
            conversation.end_session()
            conversation_id = conversation.wait_for_session_end()
        st.wait_for(lambda s: s.connections[0].closed, 5)
        record = st.sim.connections[0]

    assert conversation_id == record.conversation_id
    assert record.text_only is True and record.text_only_placement == "top_level"
    assert record.user_messages == ["hello"]
    assert (record.close_code, record.closed_by) == (1000, "client")
    assert st.sim.signed_url_requests == (1 if requires_auth else 0)
    assert "source=python_sdk" in record.path


def test_a_client_that_vanishes_mid_flood_ends_the_connection_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No close frame, a TCP reset while the server writes: recorded as the client's 1006, nothing raised."""

    async def main() -> ConnectionRecord:
        async with Simulator(default=Scenario(name="flood", flood=1_000_000), ping_interval=None) as sim:
            async with peer(sim.conversation_url(), pong=False) as p:
                await p.until(of_kind("user_transcript"))
                p.ws.transport.abort()
            await sim.wait_for(lambda s: only(s).closed, WAIT)
            return only(sim)

    with caplog.at_level("ERROR"):
        record = run(main())
    assert (record.close_code, record.closed_by) == (1006, "client")
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
