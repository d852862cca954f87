"""The official Python SDK's ``Conversation`` through the relay to the simulator: nothing lost, nothing added."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.log.envelope import frame_bytes
from ingest.simulator import Scenario, SimulatorThread
from ingest.sources.relay import RelayConfig
from tests.conftest import TIMEOUT_FACTOR
from tests.ingest.sources.relay.helpers import AGENT, KEY, RELAY_TOKEN, RelayThread, logged


TIMEOUT = 10 * TIMEOUT_FACTOR
# The agent speaks first, then waits for typed messages; pings every 50 ms.
TALKING = Scenario(name="talking", user_turns=["I need help with my bill."], end="wait")


class Recorded:
    """Every frame the SDK's socket sent and received, in order (a tap on its connection)."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.received: list[str | bytes] = []
        self.urls: list[str] = []


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    import elevenlabs.conversational_ai.conversation as sdk
    from websockets.sync.client import connect

    record = Recorded()

    def tapped_connect(url: str, **kwargs: Any) -> Any:
        record.urls.append(url)
        ws = connect(url, **kwargs)
        recv, send = ws.recv, ws.send

        def tapped_recv(*args: Any, **kw: Any) -> Any:
            data = recv(*args, **kw)
            record.received.append(data)
            return data

        def tapped_send(data: Any, *args: Any, **kw: Any) -> Any:
            record.sent.append(data)
            return send(data, *args, **kw)

        ws.recv = tapped_recv  # type: ignore[method-assign]
        ws.send = tapped_send  # type: ignore[method-assign]
        return ws

    monkeypatch.setattr(sdk, "connect", tapped_connect)
    yield record


@pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")
def test_a_text_conversation_through_the_relay_is_logged_byte_exact_in_order_once(
    data_dir: Path, recorded: Recorded
) -> None:
    """Signed URL, metadata, typed messages answered, pings answered by the SDK, a clean end: all in the log."""
    from elevenlabs.client import ElevenLabs
    from elevenlabs.conversational_ai.conversation import Conversation

    replies: list[str] = []
    answered = threading.Condition()

    def on_agent_response(text: str) -> None:
        with answered:
            replies.append(text)
            answered.notify_all()

    def wait_reply(text: str) -> None:
        with answered:
            assert answered.wait_for(lambda: text in replies, TIMEOUT), replies

    with (
        SimulatorThread(api_key=KEY, default=TALKING, ping_interval=0.05) as sim,
        RelayThread(
            data_dir,
            RelayConfig(agent_ids=[AGENT], base_url=sim.http_url, api_key=KEY, relay_token=RELAY_TOKEN),
        ) as relay,
    ):
        # The SDK pointed at the relay by its base URL; the relay token is its "API key".
        client = ElevenLabs(api_key=RELAY_TOKEN, base_url=relay.http_url)
        conversation: Any = Conversation(
            client, AGENT, requires_auth=True, user_id="user-42", callback_agent_response=on_agent_response
        )
        conversation.start_session()
        try:
            wait_reply("You said: I need help with my bill.")
            conversation.send_user_message("hello")
            wait_reply("You said: hello")
            conversation.send_user_message("Olá, ça va? 😀")
            wait_reply("You said: Olá, ça va? 😀")
            sim.wait_for(lambda s: len(s.connections[0].pongs) >= 3, TIMEOUT)
        finally:
            conversation.end_session()
            conversation_id = conversation.wait_for_session_end()
        sim.wait_for(lambda s: s.connections[0].closed, TIMEOUT)
        record = sim.sim.connections[0]
        relay.stop()

    # The relay handed out its own URL: the platform's signed URL never reached the client.
    assert recorded.urls[0].startswith(relay.ws_url + "/v1/convai/conversation?agent_id=agent_demo&")
    assert "source=python_sdk" in recorded.urls[0] and "source=python_sdk" in record.path
    assert record.user_messages == ["hello", "Olá, ça va? 😀"]
    assert len(record.pongs) >= 3 and (record.close_code, record.closed_by) == (1000, "client")
    assert record.init is not None and record.init.get("user_id") == "user-42"

    lines = logged(data_dir)
    relayed = [line for line in lines if line.source == "relay"]
    # Everything the SDK sent and received, byte for byte, in order, once (the simulator sends no audio here).
    assert [line.frame for line in relayed if line.direction == "out"] == [
        frame_bytes(f) for f in recorded.sent
    ]
    assert [line.frame for line in relayed if line.direction == "in"] == [
        frame_bytes(f) for f in recorded.received
    ]
    # And what the simulator counted on its side matches.
    assert record.frames_sent == len(recorded.received)
    assert record.frames_received == len(recorded.sent)
    assert {line.envelope["connection_id"] for line in relayed} == {relayed[0].envelope["connection_id"]}
    assert all(line.conversation_id == conversation_id for line in relayed[1:])
    assert relayed[0].type == "conversation_initiation_client_data" and relayed[0].conversation_id is None
    pings = [line for line in relayed if line.type == "ping"]
    assert len(pings) >= 3
    [closed] = [line for line in lines if line.source == "capture"]
    assert closed.event is not None
    assert closed.event["close_code"] == 1000 and closed.event["closed_by"] == "client"
    assert closed.event["frames"] == len(relayed) and closed.event["audio_skipped"] == 0
    # Neither the key nor the relay token is anywhere in the log.
    raw = b"".join(path.read_bytes() for path in (data_dir / "events").iterdir())
    assert KEY.encode() not in raw and RELAY_TOKEN.encode() not in raw
    assert orjson.loads(relayed[0].frame)["user_id"] == "user-42"
