"""The Agents WebSocket client against real servers on loopback (the simulator, or a scripted one)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from ingest.errors import AuthError
from ingest.log.envelope import LogLine
from ingest.log.reader import iter_log
from ingest.log.writer import events_dir
from ingest.simulator import Scenario, Simulator
from ingest.sources import AgentConfig, IngestSummary, LogSettings, ReconnectPolicy, run_agent, run_source
from tests.conftest import TIMEOUT_FACTOR


FAST = ReconnectPolicy(
    initial_delay=0.05, min_delay=0.1, factor=2.0, max_delay=1.0, healthy_after=0.5, normal_pause=0.05
)


def read_log(data_dir: Path) -> list[LogLine]:
    return list(iter_log(events_dir(data_dir)))


def run(coro: Awaitable[Any], timeout: float = 20.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout * TIMEOUT_FACTOR)

    return asyncio.run(bounded())


async def capture(
    sim_url: str,
    data_dir: Path,
    *,
    max_conversations: int | None = 1,
    policy: ReconnectPolicy = FAST,
    lines: list[str] | None = None,
    stop: asyncio.Event | None = None,
    **config: Any,
) -> IngestSummary:
    agent = AgentConfig(agent_id=config.pop("agent_id", "agent_demo"), base_url=sim_url, **config)

    async def feed(items: list[str]) -> AsyncIterator[str]:
        for item in items:
            yield item + "\n"

    user_lines = feed(lines) if lines is not None else None
    return await run_source(
        lambda writer, stop: run_agent(
            writer, agent, stop, policy=policy, user_lines=user_lines, max_conversations=max_conversations
        ),
        LogSettings(data_dir),
        stop=stop,
        handle_signals=False,
    )


def test_normal_conversation_is_logged_in_order(data_dir: Path) -> None:
    """A conversation's frames are logged with envelope fields, the init frame first, then metadata."""

    async def main() -> IngestSummary:
        async with Simulator(default=Scenario(user_turns=["I need help with billing."])) as sim:
            return await capture(sim.http_url, data_dir)

    summary = run(main())
    lines = read_log(data_dir)
    assert summary.conversations == 1
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    assert lines[0].direction == "out" and lines[0].type == "conversation_initiation_client_data"
    assert lines[0].event is not None
    assert lines[0].event["conversation_config_override"] == {"conversation": {"text_only": True}}
    assert lines[1].type == "conversation_initiation_metadata"
    conversation_id = lines[1].conversation_id
    assert conversation_id and conversation_id.startswith("conv_")
    assert lines[0].conversation_id is None
    assert all(line.conversation_id == conversation_id for line in lines[1:])
    assert len({line.envelope["connection_id"] for line in lines}) == 1
    transcripts = [line.event for line in lines if line.type == "user_transcript"]
    assert transcripts and transcripts[0] is not None
    assert transcripts[0]["user_transcription_event"]["user_transcript"] == "I need help with billing."
    assert all(line.envelope["agent_id"] == "agent_demo" for line in lines)
    assert all(line.source == "agent_ws" for line in lines[:-1])
    # capture's own record of how the connection ended comes last.
    assert lines[-1].source == "capture" and lines[-1].event is not None
    assert lines[-1].event["type"] == "connection_closed"
    assert lines[-1].event["close_code"] == 1000 and lines[-1].event["closed_by"] == "server"
    assert (
        lines[-1].event["frames"] == len(lines) - 2
    )  # the init (out) and this record are not received frames


def test_audio_is_counted_never_logged(data_dir: Path) -> None:
    """With --audio the server sends audio frames: they are counted and appear nowhere on disk."""

    async def main() -> IngestSummary:
        async with Simulator(default=Scenario(user_turns=["hello"])) as sim:
            return await capture(sim.http_url, data_dir, text_only=False)

    summary = run(main())
    assert summary.audio_skipped > 0
    lines = read_log(data_dir)
    assert not [line for line in lines if line.type == "audio"]
    assert lines[0].event is not None and "conversation_config_override" not in lines[0].event
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert b"audio_base_64" not in path.read_bytes()


def test_malformed_and_huge_frames_are_kept_verbatim(data_dir: Path) -> None:
    """Malformed JSON, arrays, literal newlines, escapes, binary and a 5 MiB frame are all kept exactly."""

    async def main() -> IngestSummary:
        script = [Scenario(name="malformed", fault="malformed"), Scenario(name="huge", fault="huge")]
        async with Simulator(script=script) as sim:
            return await capture(sim.http_url, data_dir, max_conversations=2)

    run(main())
    lines = read_log(data_dir)
    raw = [line for line in lines if "raw" in line.envelope]
    binary = [line for line in lines if "raw_b64" in line.envelope]
    assert any(line.envelope["raw"].startswith("[") for line in raw)
    assert any("\n" in line.envelope["raw"] for line in raw)
    assert binary
    escaped = [line for line in lines if b"\\u00e1" in line.frame]
    assert escaped and escaped[0].event is not None
    # Spliced byte for byte: the escape is still an escape in the file.
    segment_bytes = b"".join(p.read_bytes() for p in sorted(events_dir(data_dir).glob("*.jsonl")))
    assert b"Ol\\u00e1" in segment_bytes
    assert max(len(line.frame) for line in lines) > 4 * 1024 * 1024


def test_pong_is_sent_after_every_earlier_frame_is_written(data_dir: Path) -> None:
    """When a pong arrives, every frame sent before its ping is already in the log file."""
    checks: list[bool] = []
    pongs: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()  # conversation_initiation_client_data
        await ws.send(
            orjson.dumps(
                {
                    "type": "conversation_initiation_metadata",
                    "conversation_initiation_metadata_event": {"conversation_id": "conv_pong"},
                }
            ).decode()
        )
        for round_ in range(5):
            for i in range(50):
                event = {"user_transcript": f"r{round_} t{i}", "event_id": round_ * 100 + i}
                await ws.send(
                    orjson.dumps({"type": "user_transcript", "user_transcription_event": event}).decode()
                )
            event_id = 1000 + round_
            await ws.send(
                orjson.dumps({"type": "ping", "ping_event": {"event_id": event_id, "ping_ms": None}}).decode()
            )
            pong = orjson.loads(await ws.recv())
            pongs.append(pong)
            text = b"".join(p.read_bytes() for p in events_dir(data_dir).glob("*.jsonl"))
            checks.append(f'"r{round_} t49"'.encode() in text and f'"event_id":{event_id}'.encode() in text)
        await ws.close(1000, "done")

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            await capture(f"http://127.0.0.1:{port}", data_dir, agent_id="agent_x")

    run(main())
    assert pongs == [{"type": "pong", "event_id": 1000 + r} for r in range(5)]
    assert checks == [True] * 5


def test_pongs_answer_the_simulator_pings(data_dir: Path) -> None:
    """Every ping the simulator sends is answered with its event_id, well within the deadline."""

    async def main() -> list[tuple[int, float]]:
        stop = asyncio.Event()
        async with Simulator(default=Scenario(end="wait"), ping_interval=0.02, pong_deadline=0.5) as sim:
            task = asyncio.ensure_future(capture(sim.http_url, data_dir, stop=stop))
            await sim.wait_for(lambda s: bool(s.connections) and len(s.connections[0].pongs) >= 20, 10)
            stop.set()
            await task
            record = sim.connections[0]
            assert record.close_code == 1000
            return list(record.pongs)

    pongs = run(main())
    assert len(pongs) >= 20
    assert all(latency < 0.5 for _, latency in pongs)
    event_ids = [event_id for event_id, _ in pongs]
    assert event_ids == sorted(event_ids)


def test_accept_then_close_backs_off(data_dir: Path) -> None:
    """A server that accepts and closes at once gets growing delays, not a tight loop."""

    async def main() -> list[float]:
        script = [Scenario(name="accept_close", fault="accept_close")] * 5
        async with Simulator(script=script) as sim:
            await capture(sim.http_url, data_dir, max_conversations=1)
            return [c.attempted_at for c in sim.connections]

    attempts = run(main())
    assert len(attempts) == 6
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    # FAST: first delay random in [0, 0.05), then 0.1, 0.2, 0.4, 0.8 (each jittered down by <= 20%).
    assert gaps[1] >= 0.1 * 0.8 - 0.01
    assert gaps[2] >= 0.2 * 0.8 - 0.01
    assert gaps[3] >= 0.4 * 0.8 - 0.01
    assert gaps[4] >= 0.8 * 0.8 - 0.01
    assert gaps[4] > gaps[1]


@pytest.mark.parametrize("fault", ["http_503", "close_1011", "drop", "close_3000", "close_1002"])
def test_transient_failures_are_retried(data_dir: Path, fault: str) -> None:
    """503, 1011, 1002, 3000 and a dropped connection are retried until a conversation succeeds."""

    async def main() -> tuple[IngestSummary, int]:
        async with Simulator(script=[Scenario(name=fault, fault=fault)]) as sim:
            # Faults after the metadata still count as a conversation.
            after_metadata = fault in ("drop", "close_1011", "close_1002")
            summary = await capture(sim.http_url, data_dir, max_conversations=2 if after_metadata else 1)
            return summary, len(sim.connections)

    summary, attempts = run(main())
    assert attempts >= 2
    assert summary.conversations >= 1


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"api_key": "wrong-key"}, "401"),
        ({"agent_id": "agent_unknown"}, "404"),
    ],
)
def test_refused_credentials_are_fatal(data_dir: Path, kwargs: dict[str, str], expected: str) -> None:
    """A refused key or unknown agent stops at once with AuthError (exit code 2), no retry storm."""

    async def main() -> int:
        async with Simulator(api_key="right-key") as sim:
            with pytest.raises(AuthError) as info:
                await capture(sim.http_url, data_dir, **kwargs)
            assert expected in str(info.value)
            assert info.value.exit_code == 2
            return len(sim.connections) + sim.signed_url_requests

    assert run(main()) <= 1


def test_override_error_is_fatal(data_dir: Path) -> None:
    """Close 1008 with an override error event stops with a message saying what to fix."""

    async def main() -> None:
        async with Simulator(default=Scenario(name="override_error", fault="override_error")) as sim:
            with pytest.raises(AuthError, match="override"):
                await capture(sim.http_url, data_dir)
            assert len(sim.connections) == 1

    run(main())
    assert any(line.type == "error" for line in read_log(data_dir))


def test_signed_url_is_fetched_per_connection_and_key_never_stored(data_dir: Path) -> None:
    """With a key, every connection uses a fresh signed URL; the key appears in no file."""
    key = "sk_test_SECRET_1234567890"

    async def main() -> tuple[int, int]:
        async with Simulator(api_key=key) as sim:
            await capture(sim.http_url, data_dir, api_key=key, max_conversations=2)
            return sim.signed_url_requests, len(sim.connections)

    requests, connections = run(main())
    assert connections == 2 and requests == 2
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes()


def test_typed_lines_are_logged_before_they_are_sent(data_dir: Path) -> None:
    """--input lines are logged as outgoing user_message frames, sent, answered, then ingest stops."""

    async def main() -> list[str]:
        async with Simulator(default=Scenario(end="wait", user_turns=[])) as sim:
            await capture(
                sim.http_url,
                data_dir,
                max_conversations=None,
                lines=["Olá, preciso de ajuda", "", "yes", "yes"],
            )
            return list(sim.connections[0].user_messages)

    received = run(main())
    assert received == ["Olá, preciso de ajuda", "yes", "yes"]
    lines = read_log(data_dir)
    sent = [line for line in lines if line.type == "user_message"]
    assert [line.direction for line in sent] == ["out"] * 3
    assert [line.event["text"] for line in sent if line.event] == received
    replies = [line for line in lines if line.type == "agent_response"]
    assert replies and replies[-1].seq > sent[-1].seq
    assert all(line.conversation_id for line in sent)


def test_stop_closes_with_1000(data_dir: Path) -> None:
    """Setting stop closes the connection with 1000 and returns promptly."""

    async def main() -> int | None:
        stop = asyncio.Event()
        async with Simulator(default=Scenario(end="wait")) as sim:
            task = asyncio.ensure_future(capture(sim.http_url, data_dir, stop=stop, max_conversations=None))
            await sim.wait_for(
                lambda s: bool(s.connections) and s.connections[0].conversation_id is not None, 5
            )
            stop.set()
            await asyncio.wait_for(task, 5)
            await sim.wait_for(lambda s: s.connections[0].close_code is not None, 5)
            return sim.connections[0].close_code

    assert run(main()) == 1000
