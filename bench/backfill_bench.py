"""Backfill throughput (conversations/s) against the simulator, next to a bare-client ceiling.

Starts the project's simulator in its own process with an account of N
synthetic conversations (``done`` and ``failed``; each GET answered after
``--latency`` seconds, standing in for the real API's service time; with
``--plan-limit L``, more than L requests in flight are answered 429
``too_many_concurrent_requests``, as a plan's limit is). Then, for each
concurrency, clients in fresh processes walk the same listing and fetch the
same conversations, taking turns:

* ``ceiling``: a bare aiohttp client (a semaphore, the list pages, the GETs, the
  bodies read) that logs nothing; with a plan limit it sends at most that many
  at once (the best a client told the limit could do), so it is never refused;
* ``backfill``: :func:`ingest.sources.rest.backfill.run_backfill` into an empty data dir
  (``--fsync interval``), the same code as ``capture backfill``;
* ``baseline`` (with ``--baseline DIR``): the same, imported from another
  checkout (``git worktree add /tmp/old <commit>``), for a before/after in one run.

Each is timed inside its process from the first request to the last answer, so
interpreter start-up is not counted; its CPU time over the same span is shown
per conversation (what logging adds on the client, whatever the server's speed). The simulator also counts the most
requests it saw in flight, which must never exceed the concurrency, and the
requests it refused (429s).

Usage: ``python bench/backfill_bench.py [--conversations 2000] [--concurrency 2,8,32] [--latency 0.01]
[--plan-limit 4] [--baseline /tmp/old] [--repeat 3]``
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
n, latency, limit = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]) or None
async def main():
    spec = AccountSpec(conversations=n, processing=0, in_progress=0, spacing_secs=60)
    async with Simulator(api_key="sk_bench", account=spec, rest_latency=latency, rest_max_concurrency=limit) as sim:
        print(sim.http_url, flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            # "reset": report and reset the in-flight maximum and the 429s between runs.
            print(sim.rest_max_in_flight, sim.rest.throttled, flush=True)
            sim.rest_max_in_flight = sim.rest.throttled = 0
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
    refused: int

    @property
    def rate(self) -> float:
        return self.conversations / self.seconds if self.seconds else 0.0


def run(script: str, *args: str, code: Path = ROOT) -> dict[str, float]:
    """Run a client in a fresh process, importing ``ingest`` from ``code``; its JSON result."""
    env = dict(os.environ, PYTHONPATH=str(code))
    out = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=code, capture_output=True, text=True, check=False, env=env
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
    parser.add_argument(
        "--plan-limit", type=int, default=0, help="the simulator's concurrency limit; 0 for none"
    )
    parser.add_argument("--baseline", type=Path, help="another checkout whose backfill runs in turn")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the best is kept")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    clients = ["ceiling", "backfill"] + (["baseline"] if args.baseline else [])

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(args.conversations), str(args.latency), str(args.plan_limit)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert server.stdin is not None and server.stdout is not None
    url = server.stdout.readline().strip()

    def counters() -> tuple[int, int]:
        """The most requests in flight and the 429s since the last call."""
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write("reset\n")
        server.stdin.flush()
        most, refused = server.stdout.readline().split()
        return int(most), int(refused)

    def measure(client: str, level: int) -> Result:
        if client == "ceiling":
            data = run(CEILING, url, str(min(level, args.plan_limit) if args.plan_limit else level))
        else:
            data_dir = Path(tempfile.mkdtemp(prefix="capture-backfill-bench-"))
            try:
                code = args.baseline if client == "baseline" else ROOT
                data = run(BACKFILL, url, str(level), str(data_dir), code=code)
            finally:
                shutil.rmtree(data_dir, ignore_errors=True)
        return Result(client, level, int(data["conversations"]), data["seconds"], data["cpu"], *counters())

    results: list[Result] = []
    try:
        counters()
        for level in levels:
            best: dict[str, Result] = {}
            for _ in range(args.repeat):
                for client in clients:
                    result = measure(client, level)
                    if client not in best or result.rate > best[client].rate:
                        best[client] = result
            results += [best[client] for client in clients]
    finally:
        server.stdin.close()
        server.wait(10)

    limit = f"a plan limit of {args.plan_limit} in flight, " if args.plan_limit else ""
    print(
        f"\nbackfill of {args.conversations:,} conversations on loopback, {limit}"
        f"{args.latency * 1000:.0f} ms simulated service time per request; {os.cpu_count()} cores"
        + (f"; baseline: {args.baseline}" if args.baseline else "")
        + "\n"
    )
    header = (
        f"{'concurrency':>11} {'client':<10} {'conversations':>13} {'s':>7} {'conv/s':>8} "
        f"{'× ceiling':>10} {'client CPU µs/conv':>19} {'max in flight':>14} {'429s':>6}"
    )
    print(header)
    print("-" * len(header))
    for i in range(0, len(results), len(clients)):
        row = results[i : i + len(clients)]
        ceiling = row[0]
        for r in row:
            print(
                f"{r.concurrency:>11} {r.client:<10} {r.conversations:>13,} {r.seconds:>7.2f} {r.rate:>8,.0f} "
                f"{r.rate / ceiling.rate:>10.2f} {r.cpu / max(r.conversations, 1) * 1e6:>19,.0f} "
                f"{r.max_in_flight:>14} {r.refused:>6}"
            )
    print(
        "\nmax in flight is what the simulator saw, refused requests included; it must never exceed the concurrency"
    )
    if args.plan_limit:
        print(f"the ceiling sends {args.plan_limit} at most (the plan limit), so it is never refused")


if __name__ == "__main__":
    main()
