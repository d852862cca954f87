"""Ingest throughput and memory against a local flood, next to a receive-only ceiling.

Starts the project's simulator in its own process, flooding ``user_transcript``
frames (with a ping every 1,000). Then, against the same server:

* ``ceiling``: a websockets client that only receives (and answers pings);
* ``capture ingest`` with each ``--fsync`` policy (and with the live projection
  when that is available), as a real subprocess.

Throughput is frames / (last flood frame time - first flood frame time), measured
inside each client (for capture: from the log's ``received_at``). Memory is the
client process's RSS sampled every 20 ms; "growth" compares the largest sample of
the last quarter of the run with the largest of the first quarter (flat ≈ 0).

Usage: ``python bench/ingest_throughput.py [--frames 200000] [--repeat 3] [--policies interval,never]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil


ROOT = Path(__file__).resolve().parent.parent

SERVER = r"""
import asyncio, sys
from ingest.simulator import Scenario, Simulator
n = int(sys.argv[1])
flood = Scenario(name="flood", flood=n, first_message=None, user_turns=[], extra_events=False, flood_ping_every=1000)
async def main():
    # A long close_timeout: a slow client (--fsync always) still drains the whole flood.
    async with Simulator(default=flood, ping_interval=None, close_timeout=600.0) as sim:
        print(sim.http_url, flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""

CEILING = r"""
import asyncio, sys, time, orjson
from websockets.asyncio.client import connect
from websockets.protocol import State
async def main(url):
    frames = 0; first = last = None
    async with connect(url, max_size=16 * 2**20) as ws:
        await ws.send('{"type":"conversation_initiation_client_data","conversation_config_override":{"conversation":{"text_only":true}}}')
        async for message in ws:
            now = time.perf_counter()
            if message.startswith('{"type":"ping"'):
                event_id = orjson.loads(message)["ping_event"]["event_id"]
                if ws.state is State.OPEN:
                    await ws.send('{"type":"pong","event_id":%d}' % event_id)
                continue
            if message.startswith('{"type":"user_transcript"'):
                frames += 1
                first = first or now
                last = now
    print(orjson.dumps({"frames": frames, "seconds": last - first}).decode())
asyncio.run(main(sys.argv[1]))
"""


@dataclass
class Result:
    name: str
    frames: int
    seconds: float
    peak_rss: float | None = None
    growth: float | None = None

    @property
    def rate(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def sample_rss(proc: subprocess.Popen[bytes]) -> list[float]:
    """Sample a process's RSS (MiB) every 20 ms until it exits."""
    samples: list[float] = []
    handle = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            samples.append(handle.memory_info().rss / 2**20)
        except psutil.Error:
            break
        time.sleep(0.02)
    return samples


def growth_of(samples: list[float]) -> float:
    quarter = max(1, len(samples) // 4)
    return max(samples[-quarter:]) - max(samples[:quarter])


def run_ceiling(url: str) -> Result:
    ws_url = url.replace("http://", "ws://") + "/v1/convai/conversation?agent_id=agent_demo"
    proc = subprocess.Popen([sys.executable, "-c", CEILING, ws_url], stdout=subprocess.PIPE, cwd=ROOT)
    samples = sample_rss(proc)
    out, _ = proc.communicate()
    data = orjson.loads(out)
    return Result("ceiling (receive only)", data["frames"], data["seconds"], max(samples), growth_of(samples))


def run_capture(url: str, fsync: str, project: bool) -> Result:
    data_dir = Path(tempfile.mkdtemp(prefix="capture-bench-"))
    try:
        argv = [
            sys.executable,
            "-c",
            "from cli.app import main; main()",
            "ingest",
            "--agent-id",
            "agent_demo",
            "--base-url",
            url,
            "--data-dir",
            str(data_dir),
            "--max-conversations",
            "1",
            "--fsync",
            fsync,
        ]
        if not project:
            argv.append("--no-project")
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        samples = sample_rss(proc)
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"capture ingest failed: {err.decode()}")
        sys.path.insert(0, str(ROOT))
        from ingest.log.reader import iter_log
        from ingest.log.writer import events_dir

        first = last = None
        frames = 0
        for line in iter_log(events_dir(data_dir)):
            if line.type == "user_transcript":
                frames += 1
                first = first or line.received_at
                last = line.received_at
        assert first is not None and last is not None
        from datetime import datetime

        seconds = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
        name = f"capture ingest --fsync {fsync}" + (" + live projection" if project else "")
        return Result(name, frames, seconds, max(samples), growth_of(samples))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds; each runs every row once, so all rows sample the same moments; the best is kept",
    )
    parser.add_argument(
        "--policies", default="interval,never,always", help="the --fsync policies to run, comma-separated"
    )
    args = parser.parse_args()

    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(args.frames)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        try:
            import projections.live  # noqa: F401

            live = True
        except ImportError:
            live = False
        plans: list[tuple[str, str | None, bool]] = [("ceiling", None, False)]
        plans += [("capture", policy, False) for policy in args.policies.split(",")]
        if live:
            plans.append(("capture", "interval", True))
        runs: list[list[Result]] = [[] for _ in plans]
        for _ in range(args.repeat):  # round-robin: a slow or fast spell of the machine hits every row
            for row, (kind, policy, project) in enumerate(plans):
                runs[row].append(
                    run_ceiling(url) if kind == "ceiling" else run_capture(url, policy or "interval", project)
                )
        results = [max(row, key=lambda r: r.rate) for row in runs]
    finally:
        server.terminate()
        server.wait()

    ceiling = results[0].rate
    print(f"\nfloods of {args.frames:,} user_transcript frames on loopback; {os.cpu_count()} cores\n")
    header = f"{'client':<48} {'frames':>9} {'s':>7} {'frames/s':>10} {'× ceiling':>10} {'peak RSS MiB':>13} {'RSS growth':>11}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<48} {r.frames:>9,} {r.seconds:>7.2f} {r.rate:>10,.0f} {r.rate / ceiling:>10.2f} "
            f"{r.peak_rss or 0:>13.1f} {r.growth or 0:>+11.1f}"
        )
    print("\ntarget: capture ingest --fsync interval >= 0.8 x ceiling, RSS flat")


if __name__ == "__main__":
    main()
