"""Benchmark of the projections: rebuild throughput and memory, live lag, views vs a direct scan.

Run from the repository root::

    python bench/projections_bench.py            # 2 M lines, 20 s of live lag
    python bench/projections_bench.py --lines 5000000 --lag-seconds 30

It prints one table:

* rebuild: lines/s of ``capture rebuild`` next to an orjson parse-only pass
  over the same segments (the ceiling), and the ratio (target >= 0.5x); the
  same on a dense log (27% user turns) and on a log where every conversation
  is also fetched (REST) and delivered (webhook), so each user turn is seen
  three times;
* peak memory (RSS) of the rebuild process (and of its read-ahead process,
  which classifies lines on the second core) next to the log's size, and RSS
  at each quarter of the rebuild (flat means streaming); the CPU time of both;
* live projection lag at a steady rate (default 1k frames/s): time from the
  append to the row being visible in SQLite, p50/p99/max (target p99 <= 100 ms);
* a ``capture sql`` aggregate over the ``events`` view next to the same
  aggregate written directly with ``read_json`` (target >= 0.9x); the two
  queries take turns, the fastest of 5 runs of each is kept.

Each measured pass runs in a fresh process.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.log.envelope import Origin  # noqa: E402
from ingest.log.frames import Frame, inspect_frame  # noqa: E402
from ingest.log.writer import FsyncPolicy, LogWriter, events_dir  # noqa: E402


console = Console()

TURNS_PER_CONVERSATION = 8


def _frames(turn: int, mix: str) -> list[tuple[str, Frame]]:
    """The frames of one turn: (direction, frame), the user's text and the agent's reply among the rest.

    ``typical``: what a session logs per turn (audio is never logged): a ping,
    tentative transcripts while the user speaks, the final transcript, the
    agent's streamed text parts and its response; a typed message every other
    turn. About 9% of lines are user turns. ``dense``: the same without the
    tentative transcripts and streamed parts, about 27% user turns (a worst case).
    """
    said = f"I would like to change my plan, question number {turn}, por favor, obrigado"
    reply = f"Of course. Let me look at your account for turn {turn}, it will only take a moment."
    frames = [("in", f'{{"type":"ping","ping_event":{{"event_id":{turn},"ping_ms":48}}}}')]
    if mix == "typical":
        words = said.split()
        for n in range(1, 7):
            frames.append(
                ("in", '{"type":"tentative_user_transcript","tentative_user_transcription_event":'
                       f'{{"user_transcript":"{" ".join(words[: n * 2])}","event_id":{turn}}}}}')
            )  # fmt: skip
    else:
        frames.append(("in", '{"type":"vad_score","vad_score_event":{"vad_score":0.93}}'))
    frames.append(
        ("in", '{"type":"user_transcript","user_transcription_event":'
               f'{{"user_transcript":"{said}","event_id":{turn}}}}}')
    )  # fmt: skip
    if mix == "typical":
        parts = ["", *reply.split(" ")[:6], ""]
        for n, part in enumerate(parts):
            kind = "start" if n == 0 else "stop" if n == len(parts) - 1 else "delta"
            frames.append(
                ("in", '{"type":"agent_chat_response_part","text_response_part":'
                       f'{{"text":"{part} ","type":"{kind}","event_id":{turn}}}}}')
            )  # fmt: skip
    frames.append(
        (
            "in",
            f'{{"type":"agent_response","agent_response_event":{{"agent_response":"{reply}","event_id":{turn}}}}}',
        )
    )
    if turn % 2:
        frames.append(
            ("out", orjson.dumps({"type": "user_message", "text": f"typed answer {turn}"}).decode())
        )
    return [(direction, inspect_frame(text)) for direction, text in frames]


TURN_FRAMES = {
    mix: [_frames(turn, mix) for turn in range(TURNS_PER_CONVERSATION)] for mix in ("typical", "dense")
}
INIT = inspect_frame('{"type":"conversation_initiation_client_data","user_id":"user-42"}')


def _metadata(conversation_id: str) -> Frame:
    return inspect_frame(
        '{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":'
        f'{{"conversation_id":"{conversation_id}","agent_output_audio_format":"pcm_16000"}}}}'
    )


CLOSED = inspect_frame(
    '{"type":"connection_closed","close_code":1000,"close_reason":"","closed_by":"server",'
    '"duration_s":42.0,"frames":120,"audio_skipped":300}'
)


def conversation_lines(n: int, mix: str = "typical") -> list[tuple[Origin, Frame]]:
    """The lines of conversation ``n``, in order, ending with capture's connection_closed record."""
    connection = f"c{n:012x}"
    conversation = f"conv_{n:012x}"
    lines = [
        (Origin("agent_ws", "out", "agent_bench", connection, None), INIT),
        (Origin("agent_ws", "in", "agent_bench", connection, None), _metadata(conversation)),
    ]
    got = Origin("agent_ws", "in", "agent_bench", connection, conversation)
    sent = Origin("agent_ws", "out", "agent_bench", connection, conversation)
    for turn in TURN_FRAMES[mix]:
        lines.extend((got if direction == "in" else sent, frame) for direction, frame in turn)
    lines.append((Origin("capture", "in", "agent_bench", connection, conversation), CLOSED))
    return lines


def conversation_body(n: int) -> dict[str, Any]:
    """Conversation ``n`` as the REST API (and a transcription webhook's ``data``) tells it afterwards."""
    transcript: list[dict[str, Any]] = []
    for turn in range(TURNS_PER_CONVERSATION):
        said = f"I would like to change my plan, question number {turn}, por favor, obrigado"
        reply = f"Of course. Let me look at your account for turn {turn}, it will only take a moment."
        transcript.append(
            {
                "role": "user",
                "message": said,
                "time_in_call_secs": 10 * turn + 2,
                "source_medium": "audio",
                "source_event_id": turn,
                "interrupted": False,
            }
        )
        transcript.append(
            {
                "role": "agent",
                "message": reply,
                "time_in_call_secs": 10 * turn + 5,
                "source_medium": "audio",
                "source_event_id": turn,
                "interrupted": False,
                "conversation_turn_metrics": {"metrics": {"convai_llm_service_ttfb": {"elapsed_time": 0.31}}},
            }
        )
        if turn % 2:
            transcript.append(
                {
                    "role": "user",
                    "message": f"typed answer {turn}",
                    "time_in_call_secs": 10 * turn + 8,
                    "source_medium": "text",
                    "source_event_id": turn,
                    "interrupted": False,
                }
            )
    return {
        "agent_id": "agent_bench", "conversation_id": f"conv_{n:012x}", "status": "done", "user_id": "user-42",
        "transcript": transcript,
        "metadata": {"start_time_unix_secs": 1_795_000_000 + 600 * n, "call_duration_secs": 90, "cost": 400,
                     "termination_reason": "end_call tool was called.", "main_language": "en"},
        "analysis": {"call_successful": "success", "transcript_summary": "The user asked to change plan."},
        "conversation_initiation_client_data": {"user_id": "user-42", "dynamic_variables": {"user_name": "Zoë"}},
        "has_audio": True, "has_user_audio": True, "has_response_audio": True,
    }  # fmt: skip


def every_source_lines(n: int) -> list[tuple[Origin, Frame]]:
    """Conversation ``n`` seen live, then fetched (REST) and delivered (webhook): each user turn three times."""
    body = conversation_body(n)
    conversation = body["conversation_id"]
    webhook = {"type": "post_call_transcription", "event_timestamp": 1_795_000_100 + 600 * n, "data": body}
    return [
        *conversation_lines(n),
        (Origin("rest", "in", "agent_bench", None, conversation), inspect_frame(orjson.dumps(body).decode())),
        (
            Origin("webhook", "in", "agent_bench", f"w{n:012x}", conversation),
            inspect_frame(orjson.dumps(webhook).decode()),
        ),
    ]


def generate(data_dir: Path, lines: int, mix: str = "typical") -> int:
    """Append about ``lines`` lines with a LogWriter; return the number written.

    ``mix``: ``typical`` or ``dense`` live sessions (see ``_frames``), or
    ``every_source``: typical sessions each also fetched and delivered.
    """
    written = 0
    with LogWriter.open(data_dir, fsync=FsyncPolicy.NEVER) as writer:
        n = 0
        while written < lines:
            for origin, frame in (
                every_source_lines(n) if mix == "every_source" else conversation_lines(n, mix)
            ):
                writer.append(origin, frame)
            written = writer.next_seq - 1
            n += 1
    return written


def _child(code: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it prints one JSON object last."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench child failed:\n{done.stderr}")
    last = done.stdout.strip().splitlines()[-1]
    try:
        return orjson.loads(last)  # type: ignore[no-any-return]
    except orjson.JSONDecodeError:
        raise SystemExit(f"bench child printed {done.stdout[-2000:]!r}") from None


_RSS = """
import resource, os
def rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def children_peak_mb():
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
def cpu_seconds():
    return sum(u.ru_utime + u.ru_stime for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
"""


def best_of(runs: int, *measures: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run each measure ``runs`` times, taking turns; keep each one's fastest run.

    This machine is shared and its speed drifts: taking turns lets a slow or
    fast spell hit every measure alike.
    """
    results: list[list[dict[str, Any]]] = [[] for _ in measures]
    for _ in range(max(1, runs)):
        for done, measure in zip(results, measures, strict=True):
            done.append(measure())
    bests = []
    for done in results:
        best = min(done, key=lambda r: r["elapsed"])
        best["peak_mb"] = max(r["peak_mb"] for r in done)
        best["children_peak_mb"] = max(r.get("children_peak_mb", 0.0) for r in done)
        bests.append(best)
    return bests


def parse_ceiling(data_dir: Path) -> dict[str, Any]:
    code = f"""{_RSS}
import orjson, time, json
from pathlib import Path
from ingest.log.reader import open_segment
from ingest.log.segments import list_segments
started = time.perf_counter()
n = 0
for path in list_segments(Path({str(events_dir(data_dir))!r})):
    with open_segment(path) as f:
        for raw in f:
            orjson.loads(raw)
            n += 1
elapsed = time.perf_counter() - started
print(json.dumps({{"lines": n, "elapsed": elapsed, "peak_mb": peak_mb()}}))
"""
    return _child(code)


def rebuild_run(data_dir: Path, db: Path, total: int) -> dict[str, Any]:
    db.unlink(missing_ok=True)
    code = f"""{_RSS}
import json
from pathlib import Path
from projections.sqlite import rebuild
marks = {{}}
cpu_before = cpu_seconds()
def progress(seq):
    quarter = min(4, 4 * seq // {total})
    marks.setdefault(quarter, rss_mb())
report = rebuild(Path({str(data_dir)!r}), Path({str(db)!r}), progress=progress)
print(json.dumps({{"lines": report.lines_read, "rows": report.rows_written, "elapsed": report.elapsed,
                  "peak_mb": peak_mb(), "children_peak_mb": children_peak_mb(),
                  "cpu": cpu_seconds() - cpu_before,
                  "quarters": [marks.get(q) for q in (1, 2, 3, 4)], "skipped": dict(report.skipped)}}))
"""
    return _child(code)


# Aggregates a user would run over `events`, as (name, SELECT over {src}). The
# direct version reads the segments with read_json and the same column types
# (declaring only some of a line's keys makes DuckDB 2.0's reader several
# times slower, which would flatter the view); the results must be equal.
AGGREGATES = [
    (
        "events per type, conversations, first/last",
        "SELECT type, count(*) AS n, count(DISTINCT conversation_id) AS conversations,"
        " min(received_at) AS first, max(received_at) AS last FROM {src} GROUP BY type ORDER BY n DESC, type",
    ),
    ("events per type", "SELECT type, count(*) AS n FROM {src} GROUP BY type ORDER BY n DESC, type"),
    (
        "lines and conversations",
        "SELECT count(*) AS lines, count(DISTINCT conversation_id) AS conversations FROM {src}",
    ),
]
ENVELOPE_TYPES = {
    "seq": "BIGINT",
    "received_at": "TIMESTAMPTZ",
    "source": "VARCHAR",
    "direction": "VARCHAR",
    "agent_id": "VARCHAR",
    "connection_id": "VARCHAR",
    "conversation_id": "VARCHAR",
    "crc32": "UBIGINT",
    "event": "JSON",
    "raw": "VARCHAR",
    "raw_b64": "VARCHAR",
}


def views_vs_direct(data_dir: Path, repeats: int) -> dict[str, Any]:
    folder = events_dir(data_dir).resolve().as_posix()
    code = f"""
import json, time
from pathlib import Path
from projections.duckdb_views import open_analytics, run_query
AGGREGATES = {AGGREGATES!r}
STRUCT = "{{" + ", ".join(f"'{{c}}': '{{t}}'" for c, t in {ENVELOPE_TYPES!r}.items()) + "}}"
DIRECT = ("(SELECT *, event->>'type' AS type FROM read_json('{folder}/*.jsonl',"
          f" format = 'newline_delimited', columns = {{STRUCT}}))")
conn = open_analytics(Path({str(data_dir)!r}))
def timed(*queries):
    # The queries take turns, so a slow or fast spell of the machine hits each alike; the fastest run of each is kept.
    best, rows = [None] * len(queries), [None] * len(queries)
    for _ in range({repeats}):
        for i, sql in enumerate(queries):
            started = time.perf_counter()
            rows[i] = list(run_query(conn, sql).rows)
            elapsed = time.perf_counter() - started
            best[i] = elapsed if best[i] is None else min(best[i], elapsed)
    return best, rows
results = []
for name, template in AGGREGATES:
    (view_time, direct_time), (view_rows, direct_rows) = timed(template.format(src="events"), template.format(src=DIRECT))
    assert view_rows == direct_rows, (name, view_rows, direct_rows)
    results.append([name, view_time, direct_time])
[ut_time], [ut_rows] = timed("SELECT count(*) FROM user_texts")
print(json.dumps({{"aggregates": results, "user_texts_view": ut_time, "user_texts_rows": ut_rows[0][0]}}))
"""
    return _child(code)


def live_lag(work: Path, seconds: float, rate: float) -> dict[str, Any]:
    """Append at ``rate`` lines/s for ``seconds``; measure append -> row visible in SQLite."""
    from projections.live import start_live_projection

    data_dir = work / "live"
    db = data_dir / "whatsapp_storage.db"
    writer = LogWriter.open(data_dir, fsync=FsyncPolicy.INTERVAL)
    live = start_live_projection(data_dir, db)
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        conn = sqlite3.connect(db, timeout=5)
        last = 0
        while True:
            finished = done.is_set()
            rows = conn.execute("SELECT seq, timestamp FROM user_texts WHERE seq > ? ORDER BY seq", (last,))
            now = time.time()
            for seq, stamp in rows.fetchall():
                appended = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
                latencies.append(now - appended)
                last = seq
            if finished:
                break
            time.sleep(0.002)
        conn.close()

    poller = threading.Thread(target=poll)
    # Let the follower start and catch up before measuring.
    deadline = time.monotonic() + 10
    while not db.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)
    poller.start()
    appended = 0
    n = 0
    pending: list[tuple[Origin, Frame]] = []
    interval = 1.0 / rate
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if not pending:
            pending = conversation_lines(n)
            pending.reverse()
            n += 1
        origin, frame = pending.pop()
        writer.append(origin, frame, datetime.now(UTC))
        appended += 1
        next_at = started + appended * interval
        pause = next_at - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    elapsed = time.perf_counter() - started
    # Wait for the last rows, then stop everything.
    settle = time.monotonic() + 5
    while time.monotonic() < settle:
        conn = sqlite3.connect(db)
        projected = conn.execute("SELECT last_seq FROM projection_state").fetchone()[0]
        conn.close()
        if projected >= writer.next_seq - 1:
            break
        time.sleep(0.01)
    done.set()
    poller.join()
    writer.close()
    live.stop()
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "rate": appended / elapsed,
        "rows": len(latencies),
        "p50": pct(0.50),
        "p99": pct(0.99),
        "max": latencies[-1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=2_000_000, help="log size for rebuild and views")
    parser.add_argument("--lag-seconds", type=float, default=20.0, help="duration of the live-lag run")
    parser.add_argument("--rate", type=float, default=1000.0, help="frames/s during the live-lag run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measure (the fastest is kept)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to build the logs (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="capture-bench-", dir=args.workdir))
    try:
        data_dir = work / "data"
        console.print(f"[dim]generating ~{args.lines:,} lines in {data_dir} …[/dim]")
        started = time.perf_counter()
        total = generate(data_dir, args.lines)
        size = sum(p.stat().st_size for p in events_dir(data_dir).iterdir())
        console.print(
            f"[dim]{total:,} lines, {size / 2**20:,.0f} MiB in {time.perf_counter() - started:.0f} s[/dim]"
        )

        console.print("[dim]parse-only ceiling and rebuild, taking turns …[/dim]")
        ceiling, built = best_of(
            args.repeats,
            lambda: parse_ceiling(data_dir),
            lambda: rebuild_run(data_dir, work / "rebuild.db", total),
        )
        console.print("[dim]views vs direct read_json …[/dim]")
        views = views_vs_direct(data_dir, max(5, args.repeats))
        console.print(f"[dim]live lag at {args.rate:,.0f} frames/s for {args.lag_seconds:.0f} s …[/dim]")
        lag = live_lag(work, args.lag_seconds, args.rate)
        other_mixes = []  # (label, lines, ceiling, rebuild) of the smaller logs of another mix
        for mix, label in (("dense", "dense log (27% user turns)"), ("every_source", "every source")):
            lines = max(args.lines // 4, 10_000)
            console.print(f"[dim]{label}: {lines:,} lines, ceiling and rebuild …[/dim]")
            mix_dir = work / mix
            mix_total = generate(mix_dir, lines, mix)
            mix_ceiling, mix_built = best_of(
                args.repeats,
                lambda: parse_ceiling(mix_dir),  # noqa: B023 - called before the loop moves on
                lambda: rebuild_run(mix_dir, work / f"{mix}.db", mix_total),  # noqa: B023
            )
            shutil.rmtree(mix_dir, ignore_errors=True)
            other_mixes.append(
                (f"{label}, {mix_total:,} lines, {mix_built['rows']:,} rows", mix_ceiling, mix_built)
            )

        ceiling_rate = ceiling["lines"] / ceiling["elapsed"]
        rebuild_rate = built["lines"] / built["elapsed"]
        table = Table(
            title=f"capture projections bench: {total:,} lines ({built['rows']:,} user turns), "
            f"{size / 2**20:,.0f} MiB of log"
        )
        table.add_column("measure")
        table.add_column("capture", justify="right")
        table.add_column("reference", justify="right")
        table.add_column("ratio / target", justify="right")
        table.add_row(
            "rebuild throughput (lines/s)",
            f"{rebuild_rate:,.0f}",
            f"{ceiling_rate:,.0f} (orjson parse only)",
            f"{rebuild_rate / ceiling_rate:.2f}x (>= 0.5x)",
        )
        for label, mix_ceiling, mix_built in other_mixes:
            mix_rate = mix_built["lines"] / mix_built["elapsed"]
            mix_ceiling_rate = mix_ceiling["lines"] / mix_ceiling["elapsed"]
            table.add_row(
                f"  same, {label}",
                f"{mix_rate:,.0f}",
                f"{mix_ceiling_rate:,.0f}",
                f"{mix_rate / mix_ceiling_rate:.2f}x",
            )
        table.add_row(
            "rebuild time / rows written",
            f"{built['elapsed']:.1f} s / {built['rows']:,} rows",
            f"{ceiling['elapsed']:.1f} s",
            f"CPU {built['cpu']:.1f} s in both processes",
        )
        quarters = " / ".join(f"{q:.0f}" if q is not None else "-" for q in built["quarters"])
        table.add_row(
            "rebuild peak RSS (MiB): folding / read-ahead process",
            f"{built['peak_mb']:.0f} / {built['children_peak_mb']:.0f}",
            f"log {size / 2**20:,.0f} MiB; parse-only {ceiling['peak_mb']:.0f}",
            f"RSS at 25/50/75/100%: {quarters}",
        )
        table.add_row(
            f"live lag at {lag['rate']:,.0f} frames/s (ms)",
            f"p50 {lag['p50']:.1f} / p99 {lag['p99']:.1f}",
            f"max {lag['max']:.1f}; {lag['rows']:,} rows",
            "p99 <= 100 ms",
        )
        ratios = []
        for name, view_time, direct_time in views["aggregates"]:
            ratios.append(direct_time / view_time)
            table.add_row(
                f"`events` view: {name} (s)",
                f"{view_time:.3f}",
                f"{direct_time:.3f} (direct read_json)",
                f"{direct_time / view_time:.2f}x (>= 0.9x)",
            )
        mean = 1.0
        for ratio in ratios:
            mean *= ratio
        table.add_row("  views, geometric mean", "", "", f"{mean ** (1 / len(ratios)):.2f}x (>= 0.9x)")
        table.add_row(
            "count(*) over `user_texts` view (s)",
            f"{views['user_texts_view']:.3f}",
            f"{views['user_texts_rows']:,} rows",
            "",
        )
        console.print(table)
    finally:
        if args.keep:
            console.print(f"[dim]kept {work}[/dim]")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
