"""A valid webhook delivery's latency, and the agent socket's, while 100 hostile requests arrive at once.

Three processes, as ``capture ingest --webhook-port`` runs in production:

* the receiver: ``capture ingest``'s own lifecycle (``run_sources()``) with the
  agent WebSocket and the webhook receiver on one event loop and one log,
  default settings (``--max-body`` 16 MiB, 64 MiB of unverified bodies
  together, 30 s idle and body timeouts, 4 KiB/s rate floor), plus a heartbeat task ticking every 5 ms on the same
  loop: how late each tick comes is how long the loop was blocked;
* the attacker: keeps 100 hostile requests in flight, each replaced as soon
  as it ends — 30 deeply nested 1.3 MB bodies with a fresh timestamp and a
  bogus signature (the body that stalled the loop 5-26 s before), 20 chunked
  64 MiB bodies that are not audio, 10 chunked 64 MiB bodies that begin like a
  ``post_call_audio`` with a bogus signature (read to their end, then 401),
  15 slowloris header trickles, 10 body trickles (1 byte/s) and 15 idle
  connections;
* this process: the simulator the agent socket talks to (a conversation that
  stays open, pinged every 20 ms: the pong round trip is the agent socket's
  latency) and a sender posting one valid, signed ``post_call_transcription``
  (~3 kB) every 20 ms, timing each until its 200.

Turns alternate, ``quiet`` (the attacker idle: the ceiling) then ``hostile``,
for ``--rounds`` rounds of ``--window`` seconds; samples are pooled per turn.
Goals (issue 11): valid p99 under 50 ms while hostile, and no other source
stalls (pong round trip, the loop's worst stall). Afterwards the log is read
back: every valid delivery is in it once, nothing hostile is.

Last, quiet, three verified transcriptions of 1 MiB and of 12 MiB each, one at
a time: their parse and line encoding run on the loop, and the table shows
what that costs the loop.

Usage: ``python bench/webhook_hostile_bench.py [--rounds 3] [--window 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.log.reader import iter_log  # noqa: E402
from ingest.log.writer import events_dir  # noqa: E402
from ingest.simulator import Delivery, DeliveryFactory, send  # noqa: E402
from ingest.simulator.conversation import conversation_body  # noqa: E402
from ingest.simulator.server import Scenario, Simulator  # noqa: E402


SECRET = "wsec_bench_0123456789abcdef"
PATH = "/webhooks/elevenlabs"
AGENT = "agent_demo"
MiB = 1024 * 1024
PING_INTERVAL = 0.02
VALID_EVERY = 0.02

RECEIVER = r"""
import asyncio, os, sys, time
from pathlib import Path
import orjson
from ingest.sources.agent.client import AgentConfig
from ingest.sources import LogSettings, run_agent, run_sources
from ingest.sources.webhook.receiver import WebhookConfig, WebhookStats, run_webhook_server

data_dir, simulator_url = sys.argv[1], sys.argv[2]
ticks = []
stats = WebhookStats()

async def heartbeat(writer, stop):
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(0.005)
        now = time.monotonic()
        ticks.append((now, now - before - 0.005))

async def webhooks(writer, stop):
    config = WebhookConfig(secret=os.environ["ELEVENLABS_WEBHOOK_SECRET"], port=0)
    return await run_webhook_server(writer, config, stop, stats=stats, on_ready=lambda p: print(p, flush=True))

async def main():
    agent = AgentConfig(agent_id=sys.argv[3], base_url=simulator_url)
    async def conversations(writer, stop):
        return await run_agent(writer, agent, stop)

    reports = await run_sources([conversations, webhooks, heartbeat], LogSettings(Path(data_dir)))
    summary = reports[0]
    report = {"ticks": ticks, "stats": stats.__dict__, "frames": summary.frames_logged}
    print(orjson.dumps(report).decode(), flush=True)

asyncio.run(main())
"""

ATTACKER = r"""
import asyncio, collections, hashlib, hmac, sys, time
import orjson

port, path = int(sys.argv[1]), sys.argv[2]
MiB = 1024 * 1024
DEEP = b'{"a":' * 20_000 + b"[" + b'"x",' * 10_000
DEEP += b" " * (1_300_000 - len(DEEP))

def bogus():
    t = int(time.time())
    return f"t={t},v0={hmac.new(b'not-the-secret', b'x', hashlib.sha256).hexdigest()}"

def head(length=None, extra=""):
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nElevenLabs-Signature: {bogus()}\r\n"
            f"Content-Type: application/json\r\n{extra}{framing}\r\n\r\n").encode()

def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)

NESTING = chunk(b"[" * MiB)
AUDIO_START = chunk(b'{"type":"post_call_audio","event_timestamp":1,"data":{"agent_id":"a","full_audio":"')
AUDIO = chunk(b"A" * MiB)
AUDIO_END = chunk(b'"}}') + b"0\r\n\r\n"
outcomes = collections.defaultdict(collections.Counter)

def settle(answer):
    answer.cancel()
    if answer.done() and not answer.cancelled():
        answer.exception()  # retrieved: a reset after the refusal is expected

async def status(reader):
    line = await reader.readline()
    return line.split(b" ")[1].decode() if line.startswith(b"HTTP/") else "closed"

async def stream(start, filler, last=b"", times=None, pause=0.0):
    # start, then filler (times times, or until answered), then last; the answer's status
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = asyncio.ensure_future(status(reader))
    try:
        writer.write(start)
        sent = 0
        while not answer.done() and (times is None or sent < times):
            writer.write(filler)
            await writer.drain()
            sent += 1
            if pause:
                await asyncio.sleep(pause)
        if not answer.done():
            writer.write(last)
            await writer.drain()
        return await answer
    finally:
        settle(answer)
        writer.close()

async def deep():
    return await stream(head(len(DEEP)) + DEEP, b"", times=0)

async def huge():
    return await stream(head(), NESTING, b"0\r\n\r\n", times=64)

async def forged_audio():
    return await stream(head() + AUDIO_START, AUDIO, AUDIO_END, times=64)

async def trickle(body):
    start = head(100_000) if body else f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    return await stream(start, b"[" if body else b"X-Slow: 1\r\n", pause=1.0)

async def idle():
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return "closed" if await reader.read() == b"" else "answered"
    finally:
        writer.close()

KINDS = {
    "deep nesting 1.3 MB": (30, deep),
    "64 MiB, not audio": (20, huge),
    "64 MiB forged audio": (10, forged_audio),
    "slowloris headers": (15, lambda: trickle(False)),
    "body at 1 byte/s": (10, lambda: trickle(True)),
    "idle connection": (15, idle),
}

async def worker(kind, attack):
    while True:
        try:
            outcome = await attack()
        except (ConnectionError, OSError):
            outcome = "reset"
        outcomes[kind][outcome] += 1

async def main():
    loop = asyncio.get_running_loop()
    tasks = []
    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if command == "go":
            outcomes.clear()
            tasks = [asyncio.ensure_future(worker(k, a)) for k, (n, a) in KINDS.items() for _ in range(n)]
        elif command == "stop":
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            print(orjson.dumps(outcomes).decode(), flush=True)
        else:
            return

asyncio.run(main())
"""


@dataclass
class Turn:
    """What one kind of turn measured, pooled over the rounds."""

    name: str
    latencies: list[float] = field(default_factory=list)  # valid deliveries, seconds
    pongs: list[float] = field(default_factory=list)  # agent socket round trips, seconds
    pings_sent: int = 0
    windows: list[tuple[float, float]] = field(default_factory=list)
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    rss: list[int] = field(default_factory=list)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


def pongs_and_pings(sim: Simulator) -> tuple[list[float], int]:
    return [rtt for c in sim.connections for _, rtt in c.pongs], sum(c.pings_sent for c in sim.connections)


async def window(
    sim: Simulator,
    session: aiohttp.ClientSession,
    url: str,
    factory: DeliveryFactory,
    seconds: float,
    receiver: psutil.Process,
    turn: Turn,
    sent: list[bytes],
) -> None:
    """Post a valid delivery every VALID_EVERY seconds for ``seconds``; record latencies, pongs, RSS."""
    pongs_before, pings_before = pongs_and_pings(sim)
    started = time.monotonic()
    next_at = started
    while time.monotonic() < started + seconds:
        delivery = factory.transcription()
        began = time.perf_counter()
        status = await send(session, url, delivery)
        turn.latencies.append(time.perf_counter() - began)
        if status != 200:
            raise SystemExit(f"a valid delivery was answered {status}")
        sent.append(delivery.body)
        turn.rss.append(receiver.memory_info().rss)
        next_at += VALID_EVERY
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    turn.windows.append((started, time.monotonic()))
    pongs_after, pings_after = pongs_and_pings(sim)
    turn.pongs += pongs_after[len(pongs_before) :]
    turn.pings_sent += pings_after - pings_before


def large_transcription(factory: DeliveryFactory, size: int) -> Delivery:
    """A valid ``post_call_transcription`` of about ``size`` bytes: a long conversation."""
    data = conversation_body(factory.conversation(), "done")
    turns = data["transcript"]
    one = len(orjson.dumps(turns[1]))
    data["transcript"] = [
        dict(turns[1 + i % (len(turns) - 1)], time_in_call_secs=i) for i in range(size // one)
    ]
    delivery = factory.transcription(data=data)
    assert len(delivery.body) < 16 * MiB  # under --max-body
    return delivery


async def verified_large(
    session: aiohttp.ClientSession,
    url: str,
    factory: DeliveryFactory,
    size: int,
    turn: Turn,
    sent: list[bytes],
) -> None:
    """Post three verified transcriptions of ``size`` bytes, one at a time; record each one's window."""
    for _ in range(3):
        delivery = large_transcription(factory, size)
        started = time.monotonic()
        if await send(session, url, delivery) != 200:
            raise SystemExit(f"a valid {size}-byte delivery was refused")
        turn.latencies.append(time.monotonic() - started)
        turn.windows.append((started, time.monotonic()))
        sent.append(delivery.body)


def command(attacker: subprocess.Popen[str], line: str) -> None:
    assert attacker.stdin is not None
    attacker.stdin.write(line + "\n")
    attacker.stdin.flush()


async def run(rounds: int, seconds: float, data_dir: Path) -> tuple[list[Turn], dict[str, Any], int]:
    scenario = Scenario(name="held", first_message=None, user_turns=[], extra_events=False, end="wait")
    async with Simulator(
        agent_ids=(AGENT,), default=scenario, ping_interval=PING_INTERVAL, pong_deadline=30
    ) as sim:
        env = {**os.environ, "ELEVENLABS_WEBHOOK_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
        env.pop("ELEVENLABS_API_KEY", None)
        receiver = subprocess.Popen(
            [sys.executable, "-c", RECEIVER, str(data_dir), f"http://127.0.0.1:{sim.port}", AGENT],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a warning per refusal: thousands
            text=True,
        )
        attacker: subprocess.Popen[str] | None = None
        try:
            assert receiver.stdout is not None
            port = int(await asyncio.to_thread(receiver.stdout.readline))
            url = f"http://127.0.0.1:{port}{PATH}"
            await sim.wait_for(lambda s: any(c.pongs for c in s.connections), 30)
            attacker = subprocess.Popen(
                [sys.executable, "-c", ATTACKER, str(port), PATH],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            process = psutil.Process(receiver.pid)
            factory = DeliveryFactory(SECRET, seed=11, agent_id=AGENT, escaped_every=0)
            turns = {"quiet": Turn("quiet"), "hostile": Turn("hostile")}
            sent: list[bytes] = []
            async with aiohttp.ClientSession() as session:
                for _ in range(rounds):
                    for name, turn in turns.items():
                        if name == "hostile":
                            command(attacker, "go")
                            await asyncio.sleep(1.0)  # the 100 are in flight
                        await window(sim, session, url, factory, seconds, process, turn, sent)
                        if name == "hostile":
                            command(attacker, "stop")
                            assert attacker.stdout is not None
                            counts = orjson.loads(await asyncio.to_thread(attacker.stdout.readline))
                            for kind, by_outcome in counts.items():
                                merged = turn.outcomes.setdefault(kind, {})
                                for outcome, n in by_outcome.items():
                                    merged[outcome] = merged.get(outcome, 0) + n
                            await asyncio.sleep(0.5)  # the refused connections close
                for size in (1 * MiB, 12 * MiB):
                    turn = turns[f"verified {size // MiB} MiB"] = Turn(f"verified {size // MiB} MiB")
                    await verified_large(session, url, factory, size, turn, sent)
            command(attacker, "quit")
            receiver.terminate()
            out, _ = await asyncio.to_thread(receiver.communicate, timeout=60)
            report = orjson.loads(out.strip().splitlines()[-1])
        finally:
            for proc in (attacker, receiver):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
    stored = [line.frame for line in iter_log(events_dir(data_dir)) if line.source == "webhook"]
    if stored != sent:
        raise SystemExit(f"the log holds {len(stored)} webhook lines for {len(sent)} valid deliveries")
    return list(turns.values()), report, len(stored)


def stalls(ticks: list[tuple[float, float]], windows: list[tuple[float, float]]) -> list[float]:
    return [late for at, late in ticks if any(start <= at <= end for start, end in windows)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per turn")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="capture-webhook-hostile-"))
    try:
        turns, report, stored = asyncio.run(run(args.rounds, args.window, data_dir))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    ticks = [(at, late) for at, late in report["ticks"]]
    ms = 1000
    print(
        f"\n{args.rounds} rounds of {args.window:.0f} s per turn; one valid delivery every "
        f"{VALID_EVERY * ms:.0f} ms, the agent socket pinged every {PING_INTERVAL * ms:.0f} ms; "
        f"{os.cpu_count()} cores; {stored} valid deliveries stored, nothing else\n"
    )
    header = (
        f"{'turn':<8} {'valid':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'p99 ×quiet':>10} "
        f"{'pong p99':>8} {'pong max':>8} {'missed':>6} {'loop worst':>10} {'loop p99':>8} {'RSS MiB':>7}"
    )
    print(header)
    print("-" * len(header))
    quiet_p99 = percentile(turns[0].latencies, 0.99)
    for turn in turns[:2]:
        late = stalls(ticks, turn.windows)
        p99 = percentile(turn.latencies, 0.99)
        print(
            f"{turn.name:<8} {len(turn.latencies):>6} {percentile(turn.latencies, 0.5) * ms:>7.1f} "
            f"{p99 * ms:>7.1f} {max(turn.latencies) * ms:>7.1f} {p99 / quiet_p99:>10.2f} "
            f"{percentile(turn.pongs, 0.99) * ms:>8.1f} {max(turn.pongs) * ms:>8.1f} "
            f"{max(0, turn.pings_sent - len(turn.pongs)):>6} {max(late) * ms:>10.1f} {percentile(late, 0.99) * ms:>8.1f} "
            f"{max(turn.rss) / 2**20:>7.0f}"
        )
    print("\nverified large transcriptions, one at a time, quiet (their parse and line are on the loop):")
    for turn in turns[2:]:
        late = stalls(ticks, turn.windows)
        print(
            f"  {turn.name:<16} latency max {max(turn.latencies) * ms:>6.1f} ms, "
            f"loop worst stall {max(late, default=0.0) * ms:>6.1f} ms"
        )
    hostile = turns[1]
    print("\nhostile requests handled during the hostile turns (outcome: HTTP status, closed or reset):")
    for kind, by_outcome in hostile.outcomes.items():
        shown = ", ".join(f"{outcome} ×{n}" for outcome, n in sorted(by_outcome.items()))
        print(f"  {kind:<22} {shown}")
    counters = report["stats"]
    print(f"\nreceiver counters: {counters}")
    print(
        "\n'valid': deliveries timed (request to 200); 'pong': the agent socket's ping→pong round trip as the "
        "simulator saw it; 'missed': pings unanswered by the window's end (a ping sent just before a window may be answered in it); 'loop': how late the receiver's "
        "5 ms heartbeat ticked (a blocked event loop); RSS: the receiver's, sampled per delivery."
    )


if __name__ == "__main__":
    main()
