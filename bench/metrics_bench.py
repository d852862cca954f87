"""What --metrics-port costs the receive path: ingest of a flood with and without a scraper, taking turns.

The flood server of ``bench/ingest_throughput.py`` (``user_transcript`` frames,
a ping every 1,000); against it, in turns:

* ``capture ingest --no-project`` (the ceiling of this measurement: no metrics);
* the same with ``--metrics-port``, scraped every ``--scrape-every`` seconds
  (1 s: fifteen times a usual scrape interval) for the whole flood, each scrape
  counting the frames appended since the last one by type (the log tally).

Throughput as in ``ingest_throughput.py`` (from the log's ``received_at``); the
scrapes' durations as the scraper saw them; the frames the last scrape counted
against the lines in the log (they must agree once the flood is over).

Usage: ``python bench/metrics_bench.py [--frames 200000] [--repeat 3] [--scrape-every 1.0]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest_throughput import SERVER, Result, growth_of, sample_rss  # noqa: E402
from ingest.log.reader import iter_log  # noqa: E402
from ingest.log.writer import events_dir  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape_loop(port: int, every: float, done: threading.Event, took: list[float], last: list[str]) -> None:
    while not done.wait(every):
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                last[:] = [response.read().decode()]
        except OSError:
            continue  # not listening yet, or gone
        took.append(time.perf_counter() - started)


def counted(exposition: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith(
            'capture_frames_logged_total{direction="in",source="agent_ws",type="user_transcript"}'
        )
    )


def run(url: str, scrape_every: float | None) -> tuple[Result, list[float], float | None]:
    data_dir = Path(tempfile.mkdtemp(prefix="capture-metrics-bench-"))
    argv = [
        sys.executable, "-c", "from cli.app import main; main()", "ingest", "--agent-id", "agent_demo",
        "--base-url", url, "--data-dir", str(data_dir), "--max-conversations", "1", "--no-project",
    ]  # fmt: skip
    took: list[float] = []
    last: list[str] = []
    done = threading.Event()
    scraper = None
    if scrape_every is not None:
        port = free_port()
        argv += ["--metrics-port", str(port)]
        scraper = threading.Thread(
            target=scrape_loop, args=(port, scrape_every, done, took, last), daemon=True
        )
    try:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if scraper is not None:
            scraper.start()
        samples = sample_rss(proc)
        _, err = proc.communicate()
        done.set()
        if scraper is not None:
            scraper.join()
        if proc.returncode != 0:
            raise SystemExit(f"capture ingest failed: {err.decode()}")
        stamps = [
            line.received_at for line in iter_log(events_dir(data_dir)) if line.type == "user_transcript"
        ]
        seconds = (datetime.fromisoformat(stamps[-1]) - datetime.fromisoformat(stamps[0])).total_seconds()
        name = "capture ingest" + (
            f" + a scrape every {scrape_every:g} s" if scrape_every else " (no metrics)"
        )
        last_count = counted(last[0]) if last else None
        return Result(name, len(stamps), seconds, max(samples), growth_of(samples)), took, last_count
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds, each running both rows; the best is kept"
    )
    parser.add_argument("--scrape-every", type=float, default=1.0)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(args.frames)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    rows: list[list[tuple[Result, list[float], float | None]]] = [[], []]
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        for _ in range(args.repeat):
            rows[0].append(run(url, None))
            rows[1].append(run(url, args.scrape_every))
    finally:
        server.terminate()
        server.wait()
    best = [max(row, key=lambda r: r[0].rate) for row in rows]
    ceiling = best[0][0].rate
    print(
        f"\nfloods of {args.frames:,} user_transcript frames on loopback; {os.cpu_count()} cores; best of {args.repeat}\n"
    )
    header = f"{'client':<44} {'frames/s':>10} {'× no metrics':>13} {'peak RSS MiB':>13} {'scrapes':>8} {'p50 ms':>7} {'max ms':>7}"
    print(header)
    print("-" * len(header))
    for result, took, _ in best:
        p50 = f"{statistics.median(took) * 1000:.1f}" if took else "-"
        worst = f"{max(took) * 1000:.1f}" if took else "-"
        print(
            f"{result.name:<44} {result.rate:>10,.0f} {result.rate / ceiling:>13.2f} "
            f"{result.peak_rss or 0:>13.1f} {len(took):>8} {p50:>7} {worst:>7}"
        )
    ratios = [with_[0].rate / without[0].rate for without, with_ in zip(rows[0], rows[1], strict=True)]
    print(
        f"\nper round (scraped / not, back to back): {', '.join(f'{r:.2f}' for r in ratios)}; "
        f"median {statistics.median(ratios):.2f}"
    )
    counts = [(last, result.frames) for result, _, last in rows[1] if last is not None]
    print(
        "frames the last scrape of each round counted (the tally runs at nice 19, behind a flood): "
        + ", ".join(f"{last:,.0f} of {frames:,}" for last, frames in counts)
    )
    print("target: ~1.0 (no per-frame work); the tally reads what was appended since the last scrape")


if __name__ == "__main__":
    main()
