"""The relay on loopback: added latency per frame, throughput against a bare relay, 1,100 conversations at once.

Processes: a scripted upstream (the "platform"), ``run_relay`` with its log
(``--fsync interval``, the default), a bare websockets relay that forwards
without logging (the ceiling), and this process as the clients. Each row is
measured in the same run as its reference, taking turns.

* ``latency``: one frame (a 160-byte ``user_transcript``) at a time, echoed
  by the upstream; round trips direct to the upstream, through the bare
  relay and through capture's. A round trip crosses the relay twice, so the
  added latency per frame is half the difference of the round trips
  (goal: p99 ≤ 1 ms).
* ``throughput``: the upstream floods frames; received per second by a
  client through each relay, both back to back in each round (goal: capture
  ≥ 0.8× bare; best to best, and the median of the rounds' ratios).
* ``load``: 1,000 text conversations (a typed line every ~2 s, answered) and
  100 with audio both ways (a 250 ms chunk every 250 ms each way), pinged
  every second by the upstream, all through one relay process. The pong
  round trip is measured by the upstream (ping sent → pong received, through
  the relay and the client; goal p99 ≤ 50 ms); the relay's RSS at each
  quarter of the hold (goal: flat) and per conversation.

Usage: ``python bench/relay_bench.py [--rounds 5] [--frames 20000] [--echoes 2000] [--hold 40]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AGENT = "agent_bench"
TRANSCRIPT = orjson.dumps(
    {
        "type": "user_transcript",
        "user_transcription_event": {
            "user_transcript": "I need help with my last invoice, please.",
            "event_id": 7,
        },
    }
).decode()
INIT = '{"type":"conversation_initiation_client_data","conversation_config_override":{"conversation":{"text_only":true}}}'
# 250 ms of 16 kHz 16-bit mono, base64: what an SDK sends and the platform answers with.
AUDIO = base64.b64encode(os.urandom(8000)).decode()
AGENT_AUDIO = orjson.dumps({"type": "audio", "audio_event": {"audio_base_64": AUDIO, "event_id": 1}}).decode()
USER_AUDIO = orjson.dumps({"user_audio_chunk": AUDIO}).decode()
OPTIONS: dict[str, Any] = {"max_size": 16 * 2**20, "compression": None}


# -- the child processes ------------------------------------------------------------------------


class Upstream:
    """The scripted platform: ``mode=echo``, ``mode=flood&n=N`` or ``mode=load[&audio=1]``; GET /stats."""

    def __init__(self) -> None:
        self.rtts: list[float] = []

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/stats"):
            body = orjson.dumps({"rtts": self.rtts})
            if "reset" in request.path:
                self.rtts = []
            return connection.respond(200, body.decode())
        return None

    async def handle(self, ws: ServerConnection) -> None:
        query = {k: v[-1] for k, v in parse_qs(urlsplit(ws.request.path).query).items()}  # type: ignore[union-attr]
        mode = query.get("mode", "echo")
        with contextlib.suppress(ConnectionClosed):
            if mode == "echo":
                async for message in ws:
                    await ws.send(message)
            elif mode == "flood":
                await ws.recv()
                for _ in range(int(query["n"])):
                    await ws.send(TRANSCRIPT)
                await ws.close()
            else:
                await self.load(ws, query.get("audio") == "1")

    async def load(self, ws: ServerConnection, audio: bool) -> None:
        await ws.recv()
        conversation = "conv_" + os.urandom(12).hex()
        await ws.send(
            orjson.dumps(
                {
                    "type": "conversation_initiation_metadata",
                    "conversation_initiation_metadata_event": {"conversation_id": conversation},
                }
            ).decode()
        )
        sent: dict[int, float] = {}

        async def ping() -> None:
            await asyncio.sleep(random.random())
            event_id = 0
            while True:
                event_id += 1
                sent[event_id] = time.perf_counter()
                await ws.send(f'{{"type":"ping","ping_event":{{"event_id":{event_id},"ping_ms":null}}}}')
                await asyncio.sleep(1.0)

        async def speak() -> None:
            await asyncio.sleep(random.random() * 0.25)
            while True:
                await ws.send(AGENT_AUDIO)
                await asyncio.sleep(0.25)

        tasks = [asyncio.create_task(ping())] + ([asyncio.create_task(speak())] if audio else [])
        try:
            async for data in ws:
                message = orjson.loads(data)
                kind = message.get("type")
                if kind == "pong":
                    started = sent.pop(message["event_id"], None)
                    if started is not None:
                        self.rtts.append(time.perf_counter() - started)
                elif kind == "user_message":
                    await ws.send(
                        orjson.dumps(
                            {
                                "type": "agent_response",
                                "agent_response_event": {"agent_response": "You said it."},
                            }
                        ).decode()
                    )
        finally:
            for task in tasks:
                task.cancel()


async def serve_upstream() -> None:
    upstream = Upstream()
    async with serve(
        upstream.handle, "127.0.0.1", 0, process_request=upstream.process_request, **OPTIONS
    ) as server:
        await _announce_and_wait(server.sockets[0].getsockname()[1])


async def serve_capture_relay(upstream_url: str, data_dir: str) -> None:
    from ingest.log.writer import LogWriter
    from ingest.sources.relay import RelayConfig, run_relay

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    writer = LogWriter.open(Path(data_dir), command="bench")
    try:
        config = RelayConfig(agent_ids=[AGENT], base_url=upstream_url, port=0, max_connections=20_000)
        await run_relay(writer, config, stop, on_ready=lambda port: print(port, flush=True))
    finally:
        writer.close()


async def serve_bare_relay(upstream_url: str) -> None:
    """The ceiling: websockets both sides, forwarding each frame, logging nothing."""
    base = upstream_url.replace("http://", "ws://")

    async def handle(client: ServerConnection) -> None:
        async with connect(base + client.request.path, **OPTIONS) as platform:  # type: ignore[union-attr]

            async def pump(source: Any, sink: Any) -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for message in source:
                        await sink.send(message)

            await asyncio.wait(
                [asyncio.create_task(pump(platform, client)), asyncio.create_task(pump(client, platform))],
                return_when=asyncio.FIRST_COMPLETED,
            )

    async with serve(handle, "127.0.0.1", 0, **OPTIONS) as server:
        await _announce_and_wait(server.sockets[0].getsockname()[1])


async def _announce_and_wait(port: int) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(port, flush=True)
    await stop.wait()


@contextlib.contextmanager
def child(*args: str) -> Any:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--role", *args], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield proc, port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- measurements ------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def echo_rtts(url: str, count: int) -> list[float]:
    async with connect(url, **OPTIONS) as ws:
        for _ in range(200):  # warm up
            await ws.send(TRANSCRIPT)
            await ws.recv()
        rtts = []
        for _ in range(count):
            started = time.perf_counter()
            await ws.send(TRANSCRIPT)
            await ws.recv()
            rtts.append(time.perf_counter() - started)
        return rtts


async def flood_rate(url: str, frames: int) -> float:
    async with connect(f"{url}&mode=flood&n={frames}", **OPTIONS) as ws:
        await ws.send(INIT)
        started = time.perf_counter()
        received = 0
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()
                received += 1
        elapsed = time.perf_counter() - started
    assert received == frames, (received, frames)
    return frames / elapsed


class LoadClient:
    """One conversation: answers pings at once, types a line every ~2 s, sends audio every 250 ms if asked."""

    def __init__(self, url: str, audio: bool) -> None:
        self.url = f"{url}&mode=load{'&audio=1' if audio else ''}"
        self.audio = audio
        self.ws: ClientConnection | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.ws = await connect(self.url, **OPTIONS)
        await self.ws.send(INIT)
        self.tasks.append(asyncio.create_task(self.read()))
        self.tasks.append(asyncio.create_task(self.type()))
        if self.audio:
            self.tasks.append(asyncio.create_task(self.speak()))

    async def read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed):
            async for data in self.ws:
                if isinstance(data, str) and data.startswith('{"type":"ping"'):
                    event_id = orjson.loads(data)["ping_event"]["event_id"]
                    await self.ws.send(f'{{"type":"pong","event_id":{event_id}}}')

    async def type(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(1.0 + random.random() * 2.0)
                await self.ws.send('{"type":"user_message","text":"I would like to upgrade my account"}')

    async def speak(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(ConnectionClosed):
            await asyncio.sleep(random.random() * 0.25)
            while True:
                await self.ws.send(USER_AUDIO)
                await asyncio.sleep(0.25)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.ws is not None:
            await self.ws.close()


async def fetch_stats(port: int, reset: bool = False) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /stats{'?reset' if reset else ''} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return list(orjson.loads(body)["rtts"])


def rss_mib(proc: subprocess.Popen[str]) -> float:
    return float(psutil.Process(proc.pid).memory_info().rss) / 2**20


@contextlib.asynccontextmanager
async def conversations(url: str, text: int, audio: int) -> AsyncIterator[list[LoadClient]]:
    clients = [LoadClient(url, i < audio) for i in range(text + audio)]
    random.shuffle(clients)
    try:
        for start in range(0, len(clients), 50):
            await asyncio.gather(*(c.start() for c in clients[start : start + 50]))
        yield clients
    finally:
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp, child("upstream") as (_, up_port):
        upstream_url = f"http://127.0.0.1:{up_port}"
        with (
            child("capture", upstream_url, str(Path(tmp) / "data")) as (relay, relay_port),
            child("bare", upstream_url) as (_, bare_port),
        ):
            path = f"/v1/convai/conversation?agent_id={AGENT}"
            urls = {
                "direct": f"ws://127.0.0.1:{up_port}{path}",
                "bare relay": f"ws://127.0.0.1:{bare_port}{path}",
                "capture relay": f"ws://127.0.0.1:{relay_port}{path}",
            }
            print(f"relay bench: {os.cpu_count()} cores, loopback, {args.rounds} rounds taking turns\n")

            rtts: dict[str, list[float]] = {name: [] for name in urls}
            for _ in range(args.rounds):
                for name, url in urls.items():
                    rtts[name] += await echo_rtts(url + "&mode=echo", args.echoes)
            print(f"latency: {args.echoes * args.rounds} echoed frames per path ({len(TRANSCRIPT)} bytes)")
            print(
                f"{'path':<15}{'rtt p50 µs':>12}{'rtt p99 µs':>12}{'added/frame p50':>17}{'added/frame p99':>17}"
            )
            for name, values in rtts.items():
                added = (
                    ""
                    if name == "direct"
                    else f"{(pct(values, 0.5) - pct(rtts['direct'], 0.5)) / 2 * 1e6:>15.0f}µs"
                    f"{(pct(values, 0.99) - pct(rtts['direct'], 0.99)) / 2 * 1e6:>15.0f}µs"
                )
                print(f"{name:<15}{pct(values, 0.5) * 1e6:>12.0f}{pct(values, 0.99) * 1e6:>12.0f}{added}")

            rates: dict[str, list[float]] = {"bare relay": [], "capture relay": []}
            for round_ in range(args.rounds):
                # Each round measures both back to back, in alternating order: the machine's drift
                # between rounds is larger than the relay's cost.
                for name in list(rates)[:: 1 if round_ % 2 == 0 else -1]:
                    rates[name].append(await flood_rate(urls[name], args.frames))
            best = {name: max(values) for name, values in rates.items()}
            ratios = [c / b for b, c in zip(rates["bare relay"], rates["capture relay"], strict=True)]
            print(f"\nthroughput: {args.frames} frames platform → client, {args.rounds} rounds")
            for name, values in rates.items():
                shown = ", ".join(f"{v:,.0f}" for v in values)
                print(f"{name:<15}{best[name]:>10,.0f} frames/s best   (rounds: {shown})")
            print(
                f"{'ratio':<15}{best['capture relay'] / best['bare relay']:>10.2f}× best to best, "
                f"{statistics.median(ratios):.2f}× median of the rounds "
                f"({', '.join(f'{r:.2f}' for r in ratios)})  (goal ≥ 0.8×)"
            )

            idle = rss_mib(relay)
            started = time.perf_counter()
            async with conversations(urls["capture relay"], args.text, args.audio) as clients:
                connect_s = time.perf_counter() - started
                await asyncio.sleep(3)
                await fetch_stats(up_port, reset=True)
                samples = []
                for _ in range(4):
                    await asyncio.sleep(args.hold / 4)
                    samples.append(rss_mib(relay))
                pongs = await fetch_stats(up_port)
                cpu = psutil.Process(relay.pid).cpu_times()
            loaded = samples[0]
            print(
                f"\nload: {args.text} text + {args.audio} audio conversations through one relay process "
                f"(connected in {connect_s:.1f} s), held {args.hold:.0f} s"
            )
            print(
                f"pong round trip (upstream → relay → client → relay → upstream): {len(pongs):,} pongs, "
                f"p50 {pct(pongs, 0.5) * 1e3:.1f} ms, p99 {pct(pongs, 0.99) * 1e3:.1f} ms, "
                f"max {max(pongs) * 1e3:.1f} ms  (goal p99 ≤ 50 ms)"
            )
            print(
                f"relay RSS: idle {idle:.1f} MiB, held {', '.join(f'{s:.1f}' for s in samples)} MiB at each quarter "
                f"({samples[-1] - samples[0]:+.1f} MiB first to last quarter); "
                f"{(loaded - idle) * 1024 / len(clients):.0f} KiB per conversation"
            )
            print(f"relay CPU so far: {cpu.user + cpu.system:.1f} s; clients: {len(clients)}")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--echoes", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--text", type=int, default=1000)
    parser.add_argument("--audio", type=int, default=100)
    parser.add_argument("--hold", type=float, default=40.0)
    return parser.parse_args()


if __name__ == "__main__":
    options = _parse()
    if options.role:
        role, *rest = options.role
        if role == "upstream":
            asyncio.run(serve_upstream())
        elif role == "capture":
            asyncio.run(serve_capture_relay(*rest))
        else:
            asyncio.run(serve_bare_relay(*rest))
    else:
        asyncio.run(main(options))
