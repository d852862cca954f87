"""``capture relay`` as a process: flags and secrets, the live projection, and kill -9 during 50 conversations."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import psutil
import pytest
from typer.testing import CliRunner
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from cli.commands import app
from ingest.log.envelope import frame_bytes
from ingest.log.writer import LogWriter
from ingest.simulator import Scenario, SimulatorThread
from tests.conftest import TIMEOUT_FACTOR, capture_command, listening_port, subprocess_env
from tests.ingest.sources.relay.helpers import AGENT, KEY, RELAY_TOKEN, logged


TIMEOUT = 30 * TIMEOUT_FACTOR
WAIT = Scenario(name="wait", first_message="Hi!", user_turns=[], extra_events=False, end="wait")


@contextlib.contextmanager
def relay_process(
    data_dir: Path, base_url: str, *args: str, command: tuple[str, ...] = ("relay", "--port", "0"), **env: str
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``capture relay`` (or ``command``, e.g. ``ingest --relay-port 0``) on a free port, and that port."""
    proc = subprocess.Popen(
        [*capture_command(), *command, "--agent-id", AGENT, "--base-url", base_url,
         "--data-dir", str(data_dir), *args],
        env=subprocess_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        yield proc, listening_port(proc, TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def text_init(user_id: str) -> str:
    return orjson.dumps(
        {
            "type": "conversation_initiation_client_data",
            "conversation_config_override": {"conversation": {"text_only": True}},
            "user_id": user_id,
        }
    ).decode()


def test_flags_and_credentials_are_one_line_and_exit_2() -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["relay", "--host", "0.0.0.0", "--agent-id", AGENT], env={"CAPTURE_RELAY_TOKEN": ""}
    )
    assert result.exit_code == 2 and "CAPTURE_RELAY_TOKEN" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["relay"])
    assert result.exit_code == 2 and "--agent-id" in result.output
    result = runner.invoke(app, ["relay", "--agent-id", AGENT, "--base-url", "ftp://x"])
    assert result.exit_code == 2 and "--base-url" in result.output


@pytest.mark.parametrize(
    "command",
    [("relay", "--port", "0"), ("ingest", "--no-agent-ws", "--relay-port", "0")],
    ids=["capture relay", "capture ingest --relay-port"],
)
def test_capture_relay_logs_projects_live_and_stops_cleanly(data_dir: Path, command: tuple[str, ...]) -> None:
    """Typed turns through the relay become rows while it runs; SIGTERM closes 1001 and exits 0.

    The same with ``capture ingest --relay-port``: the relay is one more source of its process.
    """

    async def converse(port: int) -> ClientConnection:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://127.0.0.1:{port}/v1/convai/conversation/get-signed-url?agent_id={AGENT}",
                headers={"xi-api-key": RELAY_TOKEN},
            ) as answer,
        ):
            signed_url = orjson.loads(await answer.read())["signed_url"]
        ws = await connect(signed_url)
        await ws.send(text_init("user-cli"))
        for text in ("first typed line", "second typed line"):
            while orjson.loads(await ws.recv()).get("type") != "agent_response":
                pass
            await ws.send(orjson.dumps({"type": "user_message", "text": text}).decode())
        while orjson.loads(await ws.recv()).get("type") != "agent_response":
            pass
        return ws

    def rows() -> list[tuple[str, str, str]]:
        try:
            with contextlib.closing(sqlite3.connect(data_dir / "whatsapp_storage.db")) as db:
                return list(db.execute("SELECT user_id, text, sources FROM user_texts ORDER BY id"))
        except sqlite3.Error:
            return []

    with (
        SimulatorThread(api_key=KEY, default=WAIT, ping_interval=None) as sim,
        relay_process(
            data_dir, sim.http_url, command=command, ELEVENLABS_API_KEY=KEY, CAPTURE_RELAY_TOKEN=RELAY_TOKEN
        ) as (
            proc,
            port,
        ),
    ):

        async def main() -> None:
            ws = await converse(port)
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while len(rows()) < 2:
                assert asyncio.get_running_loop().time() < deadline, "no rows from the live projection"
                await asyncio.sleep(0.02)
            # The live projection runs in a child process that never saw the secrets.
            children = psutil.Process(proc.pid).children(recursive=True)
            assert children
            for child in children:
                values = set(child.environ().values())
                assert KEY not in values and RELAY_TOKEN not in values
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await ws.recv()
            assert (ws.close_code, ws.close_reason) == (1001, "capture relay is stopping")

        asyncio.run(asyncio.wait_for(main(), TIMEOUT))
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
    assert rows() == [
        ("user-cli", "first typed line", '["relay"]'),
        ("user-cli", "second typed line", '["relay"]'),
    ]
    if command[0] == "relay":
        assert "1 connections relayed (1 conversations)" in out
    for secret in (KEY, RELAY_TOKEN):
        assert secret not in out and secret not in err


@pytest.mark.skipif(os.name != "posix", reason="kill -9 is POSIX")
def test_kill_9_during_50_conversations_leaves_a_gap_free_prefix_per_connection(data_dir: Path) -> None:
    """Every client sees its connection close; per connection, the log is a prefix of what was sent, both ways."""
    clients = 50
    sent: dict[str, list[str]] = defaultdict(list)
    received: dict[str, list[str | bytes]] = defaultdict(list)
    replies: dict[str, int] = defaultdict(int)

    async def client(port: int, user: str, killed: asyncio.Event) -> None:
        async def send(frame: str) -> None:
            sent[user].append(frame)  # before it goes: a frame in the log was at least attempted
            await ws.send(frame)

        ws = await connect(f"ws://127.0.0.1:{port}/v1/convai/conversation?agent_id={AGENT}")
        try:
            await send(text_init(user))
            n = 0
            while True:
                data = await asyncio.wait_for(ws.recv(), TIMEOUT)
                received[user].append(data)
                message = orjson.loads(data)
                if message["type"] == "ping":
                    await send(
                        orjson.dumps({"type": "pong", "event_id": message["ping_event"]["event_id"]}).decode()
                    )
                elif message["type"] == "agent_response":
                    replies[user] += 1
                    n += 1
                    await send(orjson.dumps({"type": "user_message", "text": f"{user} line {n}"}).decode())
        except ConnectionClosed:
            assert killed.is_set(), "closed before the kill"

    with (
        SimulatorThread(default=WAIT, ping_interval=0.05) as sim,
        relay_process(data_dir, sim.http_url, "--no-project") as (proc, port),
    ):

        async def main() -> None:
            killed = asyncio.Event()
            tasks = [asyncio.create_task(client(port, f"user-{i:02d}", killed)) for i in range(clients)]
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while len(replies) < clients or min(replies.values()) < 3:
                assert asyncio.get_running_loop().time() < deadline, "the conversations did not get going"
                await asyncio.sleep(0.01)
            killed.set()
            proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)  # every client saw its connection close

        asyncio.run(asyncio.wait_for(main(), 2 * TIMEOUT))
        proc.wait(TIMEOUT)
        sim.wait_for(
            lambda s: len(s.connections) == clients and all(c.closed for c in s.connections), TIMEOUT
        )
        typed_upstream = {c.init["user_id"]: c.user_messages for c in sim.sim.connections if c.init}

    lines = logged(data_dir)
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    by_connection: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for line in lines:
        assert line.source == "relay"  # no connection ended before the kill
        by_connection[line.envelope["connection_id"]].append((line.direction, line.frame))
    assert len(by_connection) == clients
    for frames in by_connection.values():
        user = orjson.loads(frames[0][1])["user_id"]
        out = [frame for direction, frame in frames if direction == "out"]
        got = [frame for direction, frame in frames if direction == "in"]
        # Logged before forwarded: the client got a prefix of what is logged, the log holds a prefix of what it sent.
        assert out == [frame_bytes(f) for f in sent[user][: len(out)]]
        assert got[: len(received[user])] == [frame_bytes(f) for f in received[user]]
        # And what the platform got of the typed lines is a prefix of what is logged.
        typed = [orjson.loads(f)["text"] for f in out if orjson.loads(f)["type"] == "user_message"]
        assert typed[: len(typed_upstream[user])] == typed_upstream[user]
    # The next writer recovers the log and carries on from the last good seq.
    with LogWriter.open(data_dir, command="test") as writer:
        assert writer.next_seq == len(lines) + 1
