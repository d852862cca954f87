"""What durability costs and whether it holds: the figures ``shared/docs/durability.md`` asks for.

Three tables:

1. fsync policy cost: append latency p50/p99 and lines/s of ``LogWriter.append``
   for each ``--fsync`` policy, next to a plain ``os.write`` of the same bytes.
2. recovery time as the active segment grows (a torn tail to cut each time).
3. a kill -9 loop: ``capture ingest`` (live projection on) against a flooding
   simulator, killed at a random moment N times; after each kill the log must be
   a gap-free prefix of what was received (lines lost that had been written: 0),
   the next start recovers any torn tail, its live follower must end within
   seconds of its ingest, and at the end ``capture project`` must give each user
   turn exactly once (duplicates: 0). After every other kill the end of the
   active segment is cut (up to 2,000 lines: what a power cut under ``--fsync
   interval`` loses), after ``capture project`` brought the table to the log's
   end; the next ingest gives those seqs again, its follower must notice and
   rebuild, and the table must still equal a fresh ``capture rebuild``.

Usage: ``python bench/durability_bench.py [--kills 5] [--seed 1] [--no-power-cuts]``
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.reader import iter_log
from ingest.log.segments import RotationPolicy
from ingest.log.writer import FsyncPolicy, LogWriter, events_dir
from ingest.simulator import Scenario, SimulatorThread


ROOT = Path(__file__).resolve().parent.parent

FRAME = inspect_frame(
    '{"type":"user_transcript","user_transcription_event":{"user_transcript":"I need help with my bill.","event_id":7}}'
)
ORIGIN = Origin("agent_ws", "in", "agent_demo", "c" * 32, "conv_" + "0" * 24)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def policy_costs() -> None:
    print("\n1. fsync policy cost (LogWriter.append of a 180-byte line)\n")
    print(f"{'writer':<28} {'lines':>7} {'p50 µs':>9} {'p99 µs':>9} {'lines/s':>11} {'× plain':>8}")
    rows: list[tuple[str, int, list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plain.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        line = b"x" * 179 + b"\n"
        samples = []
        for _ in range(20_000):
            start = time.perf_counter_ns()
            os.write(fd, line)
            samples.append((time.perf_counter_ns() - start) / 1000)
        os.close(fd)
        rows.append(("plain os.write", 20_000, samples))
        for policy, count in (
            (FsyncPolicy.NEVER, 20_000),
            (FsyncPolicy.INTERVAL, 20_000),
            (FsyncPolicy.ALWAYS, 2_000),
        ):
            data_dir = Path(tmp) / policy.value
            samples = []
            with LogWriter.open(data_dir, fsync=policy) as writer:
                for _ in range(count):
                    start = time.perf_counter_ns()
                    writer.append(ORIGIN, FRAME)
                    samples.append((time.perf_counter_ns() - start) / 1000)
            rows.append((f"LogWriter --fsync {policy.value}", count, samples))
    plain_rate = len(rows[0][2]) / (sum(rows[0][2]) / 1e6)
    for name, count, samples in rows:
        rate = count / (sum(samples) / 1e6)
        print(
            f"{name:<28} {count:>7,} {percentile(samples, 0.5):>9.1f} {percentile(samples, 0.99):>9.1f} "
            f"{rate:>11,.0f} {rate / plain_rate:>8.2f}"
        )


def recovery_times() -> None:
    print("\n2. recovery time on start (scan the active segment, cut a torn tail)\n")
    print(f"{'active segment MiB':>19} {'lines':>10} {'open s':>8} {'MiB/s':>8} {'tail moved aside':>17}")
    for mib in (1, 16, 64):
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp)
            with LogWriter.open(
                data_dir, fsync=FsyncPolicy.NEVER, rotation=RotationPolicy(max_bytes=2**40)
            ) as w:
                while w.stats.bytes < mib * 2**20:
                    w.append(ORIGIN, FRAME)
                lines = w.stats.lines
            (segment,) = events_dir(data_dir).glob("*.jsonl")
            with segment.open("ab") as f:
                f.write(b'{"seq":99999999,"received_at":"2026-')
            start = time.perf_counter()
            writer = LogWriter.open(data_dir)
            took = time.perf_counter() - start
            moved = writer.recovery.quarantined is not None
            writer.close()
            print(f"{mib:>19} {lines:>10,} {took:>8.3f} {mib / took:>8.0f} {str(moved):>17}")


def _lose_the_end(data_dir: Path, rng: random.Random) -> int:
    """Cut the active segment's last lines, as a power cut under ``--fsync interval`` can; return how many."""
    active = sorted(events_dir(data_dir).glob("*.jsonl"))[-1]
    lines = active.read_bytes().splitlines(keepends=True)
    cut = min(len(lines), rng.randint(1, 2_000))
    active.write_bytes(b"".join(lines[: len(lines) - cut]))
    return cut


def _table(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT dedup_key, text, seq FROM user_texts ORDER BY id").fetchall()
    conn.close()
    return rows


def kill_loop(kills: int, seed: int, power_cuts: bool) -> None:
    cuts_note = ", every other kill a lost end of the log (a power cut)" if power_cuts else ""
    print(
        f"\n3. kill -9 loop: {kills} kills at random moments during a flood (live projection on{cuts_note})\n"
    )
    rng = random.Random(seed)
    flood = Scenario(name="flood", flood=2_000_000, first_message=None, user_turns=[], extra_events=False)
    lost = torn = rebuilt = cut_lines = cuts = 0
    outlived: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, SimulatorThread(default=flood, ping_interval=None) as sim:
        data_dir = Path(tmp) / "data"
        argv = [
            sys.executable,
            "-c",
            "from cli.app import main; main()",
            "ingest",
            "--agent-id",
            "agent_demo",
            "--base-url",
            sim.http_url,
            "--data-dir",
            str(data_dir),
        ]
        for n in range(kills):
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.5, 2.5))
            followers = psutil.Process(proc.pid).children()
            proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            _, err = proc.communicate()  # its stderr ends when the follower, which shares it, ends too
            outlived.append(time.monotonic() - killed)
            for follower in followers:
                try:
                    follower.wait(30)
                except psutil.TimeoutExpired:
                    outlived[-1] = float("inf")
            torn += err.count(b"torn tail")
            rebuilt += err.count(b"rebuilding the table from the log")
            per_connection: dict[str, list[int]] = defaultdict(list)
            seqs = []
            for line in iter_log(events_dir(data_dir)):
                seqs.append(line.seq)
                if line.type == "user_transcript" and line.event:
                    per_connection[line.envelope["connection_id"]].append(
                        line.event["user_transcription_event"]["event_id"]
                    )
            if seqs != list(range(1, len(seqs) + 1)):
                lost += 1
            lost += sum(1 for ids in per_connection.values() if ids != list(range(1, len(ids) + 1)))
            if power_cuts and n % 2 == 0 and n + 1 < kills:
                # The table first catches up (the follower lags under a flood), so that
                # the lines cut were in it: the next ingest's follower must notice.
                caught_up = subprocess.run(
                    [*argv[:3], "project", "--data-dir", str(data_dir)], cwd=ROOT, capture_output=True
                )
                assert caught_up.returncode == 0, caught_up.stderr
                cut_lines += _lose_the_end(data_dir, rng)
                cuts += 1
        final = subprocess.run(
            [*argv[:3], "project", "--data-dir", str(data_dir)], cwd=ROOT, capture_output=True
        )
        assert final.returncode == 0, final.stderr
        rebuilt += final.stderr.count(b"rebuilding the table from the log")
        fresh = subprocess.run(
            [*argv[:3], "rebuild", "--data-dir", str(data_dir), "--db", str(Path(tmp) / "fresh.db")],
            cwd=ROOT,
            capture_output=True,
        )
        assert fresh.returncode == 0, fresh.stderr
        turns = sum(1 for line in iter_log(events_dir(data_dir)) if line.type == "user_transcript")
        table = _table(data_dir / "whatsapp_storage.db")
        differs = table != _table(Path(tmp) / "fresh.db")
        rows, distinct = len(table), len({row[0] for row in table})
    print(
        f"{'kills':>6} {'log lines':>10} {'gaps or lost lines':>19} {'torn tails recovered':>21} "
        f"{'user turns':>11} {'rows':>8} {'duplicates':>11}"
    )
    print(
        f"{kills:>6} {len(seqs):>10,} {lost:>19} {torn:>21} {turns:>11,} {rows:>8,} {rows - distinct + abs(turns - rows):>11}"
    )
    print(
        f"\n{'lost ends':>10} {'lines cut':>10} {'tables rebuilt':>15} {'table = fresh rebuild':>22} "
        f"{'follower outlived its ingest, max s':>36}"
    )
    print(f"{cuts:>10} {cut_lines:>10,} {rebuilt:>15} {str(not differs):>22} {max(outlived):>36.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-power-cuts", action="store_true", help="do not cut the log's end after every other kill"
    )
    args = parser.parse_args()
    policy_costs()
    recovery_times()
    if sys.platform != "win32":
        kill_loop(args.kills, args.seed, not args.no_power_cuts)


if __name__ == "__main__":
    main()
