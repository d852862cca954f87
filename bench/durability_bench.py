"""What durability costs and whether it holds: the figures ``shared/docs/durability.md`` asks for.

Three tables:

1. fsync policy cost: append latency p50/p99 and lines/s of ``LogWriter.append``
   for each ``--fsync`` policy, next to a plain ``os.write`` of the same bytes.
2. recovery time as the active segment grows (a torn tail to cut each time).
3. a kill -9 loop: ``capture ingest`` (live projection on) against a flooding
   simulator, killed at a random moment N times; after each kill the log must be
   a gap-free prefix of what was received (lines lost that had been written: 0),
   the next start recovers any torn tail, and at the end ``capture project``
   must give each user turn exactly once (duplicates: 0).

Usage: ``python bench/durability_bench.py [--kills 5] [--seed 1]``
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


def kill_loop(kills: int, seed: int) -> None:
    print(f"\n3. kill -9 loop: {kills} kills at random moments during a flood (live projection on)\n")
    rng = random.Random(seed)
    flood = Scenario(name="flood", flood=2_000_000, first_message=None, user_turns=[], extra_events=False)
    lost = torn = 0
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
        for _ in range(kills):
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.5, 2.5))
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate()
            torn += err.count(b"torn tail")
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
        final = subprocess.run(
            [*argv[:3], "project", "--data-dir", str(data_dir)], cwd=ROOT, capture_output=True
        )
        assert final.returncode == 0, final.stderr
        turns = sum(1 for line in iter_log(events_dir(data_dir)) if line.type == "user_transcript")
        with sqlite3.connect(data_dir / "whatsapp_storage.db") as db:
            rows, distinct = db.execute(
                "SELECT count(*), count(DISTINCT dedup_key) FROM user_texts"
            ).fetchone()
        db.close()
    print(
        f"{'kills':>6} {'log lines':>10} {'gaps or lost lines':>19} {'torn tails recovered':>21} "
        f"{'user turns':>11} {'rows':>8} {'duplicates':>11}"
    )
    print(
        f"{kills:>6} {len(seqs):>10,} {lost:>19} {torn:>21} {turns:>11,} {rows:>8,} {rows - distinct + abs(turns - rows):>11}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    policy_costs()
    recovery_times()
    if sys.platform != "win32":
        kill_loop(args.kills, args.seed)


if __name__ == "__main__":
    main()
