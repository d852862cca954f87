"""Backfill throughput (conversations/s) against the simulator, next to a bare-client ceiling.

Starts the project's simulator in its own process with an account of N
synthetic conversations (``done`` and ``failed``; each GET answered after
``--latency`` seconds, standing in for the real API's service time). Then, for
each concurrency, two clients in fresh processes walk the same listing and
fetch the same conversations:

* ``ceiling``: a bare aiohttp client (a semaphore, the list pages, the GETs, the
  bodies read) that logs nothing;
* ``backfill``: :func:`ingest.sources.rest.backfill.run_backfill` into an empty data dir
  (``--fsync interval``), the same code as ``capture backfill``.

Each is timed inside its process from the first request to the last answer, so
interpreter start-up is not counted; its CPU time over the same span is shown
per conversation (what logging adds on the client, whatever the server's speed). The simulator also counts the most
requests it saw in flight, which must never exceed the concurrency.

Usage: ``python bench/backfill_bench.py [--conversations 2000] [--concurrency 2,8,32] [--latency 0.01]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson


ROOT = Path(__file__).resolve().parent.parent
KEY = "sk_bench"

SERVER = r"""
import asyncio, sys
from ingest.simulator import AccountSpec, Simulator
n, latency = int(sys.argv[1]), float(sys.argv[2])
async def main():
    spec = AccountSpec(conversations=n, processing=0, in_progress=0, spacing_secs=60)
    async with Simulator(api_key="sk_bench", account=spec, rest_latency=latency) as sim:
        print(sim.http_url, flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            # "reset": report and reset the in-flight maximum between runs.
            print(sim.rest_max_in_flight, flush=True)
            sim.rest_max_in_flight = 0
asyncio.run(main())
"""

CEILING = r"""
import asyncio, sys, time, aiohttp, orjson
url, concurrency = sys.argv[1], int(sys.argv[2])
async def main():
    slots = asyncio.Semaphore(concurrency)
    headers = {"xi-api-key": "sk_bench"}
    async with aiohttp.ClientSession() as http:
        async def get(path, params=None):
            async with slots:
                async with http.get(url + path, params=params, headers=headers) as r:
                    return r.status, await r.read()
        started, cpu = time.perf_counter(), time.process_time()
        ids, cursor = [], None
        while True:
            params = {"agent_id": "agent_demo", "page_size": "100"}
            if cursor:
                params["cursor"] = cursor
            status, body = await get("/v1/convai/conversations", params)
            page = orjson.loads(body)
            ids += [c["conversation_id"] for c in page["conversations"]]
            if not page["has_more"]:
                break
            cursor = page["next_cursor"]
        queue = asyncio.Queue()
        for i in ids:
            queue.put_nowait(i)
        fetched = 0
        async def worker():
            nonlocal fetched
            while not queue.empty():
                status, body = await get("/v1/convai/conversations/" + queue.get_nowait())
                fetched += status == 200
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(orjson.dumps({"conversations": fetched, "seconds": seconds, "cpu": cpu}).decode())
asyncio.run(main())
"""

BACKFILL = r"""
import asyncio, sys, time, orjson
from pathlib import Path
from ingest.sources.rest.backfill import BackfillConfig, run_backfill
from ingest.log.writer import LogWriter
url, concurrency, data_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
async def main():
    config = BackfillConfig("agent_demo", url, "sk_bench", concurrency=concurrency, wait_pending=0)
    with LogWriter.open(data_dir) as writer:
        started, cpu = time.perf_counter(), time.process_time()
        report = await run_backfill(writer, config, asyncio.Event())
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(orjson.dumps({"conversations": report.logged, "seconds": seconds, "cpu": cpu}).decode())
asyncio.run(main())
"""


@dataclass
class Result:
    client: str
    concurrency: int
    conversations: int
    seconds: float
    cpu: float
    max_in_flight: int

    @property
    def rate(self) -> float:
        return self.conversations / self.seconds if self.seconds else 0.0


def run(script: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"a client failed:\n{out.stderr}")
    data: dict[str, float] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--concurrency", default="2,8,32", help="comma-separated")
    parser.add_argument("--latency", type=float, default=0.01, help="seconds the simulator takes per request")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the best is kept")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(args.conversations), str(args.latency)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert server.stdin is not None and server.stdout is not None
    url = server.stdout.readline().strip()

    def max_in_flight() -> int:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write("reset\n")
        server.stdin.flush()
        return int(server.stdout.readline())

    results: list[Result] = []
    try:
        max_in_flight()
        for level in levels:
            best: dict[str, Result] = {}
            for _ in range(args.repeat):
                data = run(CEILING, url, str(level))
                ceiling = Result(
                    "ceiling",
                    level,
                    int(data["conversations"]),
                    data["seconds"],
                    data["cpu"],
                    max_in_flight(),
                )
                data_dir = Path(tempfile.mkdtemp(prefix="capture-backfill-bench-"))
                try:
                    data = run(BACKFILL, url, str(level), str(data_dir))
                finally:
                    shutil.rmtree(data_dir, ignore_errors=True)
                backfill = Result(
                    "backfill",
                    level,
                    int(data["conversations"]),
                    data["seconds"],
                    data["cpu"],
                    max_in_flight(),
                )
                for result in (ceiling, backfill):
                    if result.client not in best or result.rate > best[result.client].rate:
                        best[result.client] = result
            results += [best["ceiling"], best["backfill"]]
    finally:
        server.stdin.close()
        server.wait(10)

    print(
        f"\nbackfill of {args.conversations:,} conversations on loopback, "
        f"{args.latency * 1000:.0f} ms simulated service time per request; {os.cpu_count()} cores\n"
    )
    header = (
        f"{'concurrency':>11} {'client':<10} {'conversations':>13} {'s':>7} {'conv/s':>8} "
        f"{'× ceiling':>10} {'client CPU µs/conv':>19} {'max in flight':>14}"
    )
    print(header)
    print("-" * len(header))
    for i in range(0, len(results), 2):
        ceiling, backfill = results[i], results[i + 1]
        for r in (ceiling, backfill):
            print(
                f"{r.concurrency:>11} {r.client:<10} {r.conversations:>13,} {r.seconds:>7.2f} {r.rate:>8,.0f} "
                f"{r.rate / ceiling.rate:>10.2f} {r.cpu / max(r.conversations, 1) * 1e6:>19,.0f} {r.max_in_flight:>14}"
            )
    print("\nmax in flight is what the simulator saw; it must never exceed the concurrency")


if __name__ == "__main__":
    main()
