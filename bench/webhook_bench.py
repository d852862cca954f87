"""Webhook deliveries acknowledged per second on loopback, next to a no-logging ceiling.

The receiver runs in its own process; this process sends signed
``post_call_transcription`` deliveries (about 3 kB each, from the project's
sender) with N concurrent senders, and times each request until its answer.

Rows, for each concurrency:

* ``ceiling``: the same aiohttp stack answering 200 after reading the body,
  with no verification and no log;
* ``capture --fsync never``: verified and written (a ``write`` syscall), not
  fsynced before the 200;
* ``capture --fsync interval`` (the default): each 200 waits for an fsync
  that covers it; concurrent deliveries share fsyncs (group commit);
* ``capture --fsync always``: an fsync inside each append.

For the capture rows the log is read back afterwards: every delivery must be
there once. ``per fsync`` is deliveries stored / fsyncs run by the receiver.

Usage: ``python bench/webhook_bench.py [--deliveries 3000] [--concurrency 1,8,32] [--repeat 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.log.reader import iter_log  # noqa: E402
from ingest.log.writer import events_dir  # noqa: E402
from ingest.simulator import Delivery, DeliveryFactory, send  # noqa: E402


SECRET = "wsec_bench_0123456789abcdef"
PATH = "/webhooks/elevenlabs"

SERVER = r"""
import asyncio, os, signal, sys
from pathlib import Path
import orjson
from aiohttp import web
from ingest.log.writer import FsyncPolicy, LogWriter
from ingest.sources.webhook.receiver import WebhookConfig, WebhookStats, run_webhook_server

mode, data_dir = sys.argv[1], sys.argv[2]

async def ceiling(stop):
    async def handle(request):
        await request.read()
        return web.Response(text="ok\n")
    app = web.Application(client_max_size=16 * 2**20)
    app.router.add_post("/webhooks/elevenlabs", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await stop.wait()
    await runner.cleanup()
    return {}

async def capture(stop):
    writer = LogWriter.open(Path(data_dir), fsync=FsyncPolicy(mode), command="bench")
    stats = WebhookStats()
    config = WebhookConfig(secret=os.environ["ELEVENLABS_WEBHOOK_SECRET"], port=0)
    try:
        await run_webhook_server(writer, config, stop, stats=stats, on_ready=lambda p: print(p, flush=True))
    finally:
        writer.close()
    return {"stored": stats.stored, "fsyncs": writer.stats.fsyncs}

async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    result = await (ceiling(stop) if mode == "ceiling" else capture(stop))
    print(orjson.dumps(result).decode(), flush=True)

asyncio.run(main())
"""


@dataclass
class Result:
    server: str
    concurrency: int
    deliveries: int
    seconds: float
    latencies: list[float]
    fsyncs: int | None = None

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


async def load(url: str, deliveries: list[Delivery], concurrency: int) -> tuple[float, list[float]]:
    """Send every delivery with ``concurrency`` senders; return (seconds, latencies)."""
    latencies: list[float] = []
    queue = iter(deliveries)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm the connections up so the timing holds no TCP handshakes.
        warm = deliveries[:concurrency]
        await asyncio.gather(*(send(session, url, d) for d in warm))

        async def sender() -> None:
            for delivery in queue:
                started = time.perf_counter()
                status = await send(session, url, delivery)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise SystemExit(f"delivery answered {status}")

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def run_row(server: str, deliveries: list[Delivery], concurrency: int) -> Result:
    data_dir = Path(tempfile.mkdtemp(prefix="capture-webhook-bench-"))
    env = {**os.environ, "ELEVENLABS_WEBHOOK_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, server, str(data_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        seconds, latencies = asyncio.run(load(f"http://127.0.0.1:{port}{PATH}", deliveries, concurrency))
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        report = orjson.loads(out.strip().splitlines()[-1])
        result = Result(server, concurrency, len(latencies), seconds, latencies, report.get("fsyncs"))
        if server != "ceiling":
            sent = len(deliveries) + min(concurrency, len(deliveries))  # the warm-up ones too
            stored = sum(1 for _ in iter_log(events_dir(data_dir)))
            if stored != sent or report["stored"] != sent:
                raise SystemExit(f"{server}: {stored} lines for {sent} deliveries")
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deliveries", type=int, default=3000)
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated sender counts")
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the best is kept")
    args = parser.parse_args()
    levels = [int(n) for n in args.concurrency.split(",")]

    factory = DeliveryFactory(SECRET, seed=1, escaped_every=0)
    deliveries = [factory.transcription() for _ in range(args.deliveries)]
    size = statistics.mean(len(d.body) for d in deliveries)

    results: list[Result] = []
    for concurrency in levels:
        for server in ("ceiling", "never", "interval", "always"):
            runs = [run_row(server, deliveries, concurrency) for _ in range(args.repeat)]
            results.append(max(runs, key=lambda r: r.rate))

    print(
        f"\n{args.deliveries:,} signed post_call_transcription deliveries of ~{size:,.0f} bytes on loopback; "
        f"{os.cpu_count()} cores\n"
    )
    header = (
        f"{'receiver':<28} {'senders':>7} {'deliveries/s':>13} {'× ceiling':>10} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'per fsync':>10}"
    )
    print(header)
    print("-" * len(header))
    ceiling = {r.concurrency: r.rate for r in results if r.server == "ceiling"}
    for r in results:
        name = "ceiling (no verify, no log)" if r.server == "ceiling" else f"capture --fsync {r.server}"
        per_fsync = f"{r.deliveries / r.fsyncs:>10.1f}" if r.fsyncs and r.server != "never" else f"{'-':>10}"
        print(
            f"{name:<28} {r.concurrency:>7} {r.rate:>13,.0f} {r.rate / ceiling[r.concurrency]:>10.2f} "
            f"{r.percentile(0.5):>8.2f} {r.percentile(0.99):>8.2f} {per_fsync}"
        )


if __name__ == "__main__":
    main()
