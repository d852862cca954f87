"""Benchmark of the projections: rebuild against its ceilings, live lag, memory, views vs a direct scan.

Run from the repository root::

    python bench/projections_bench.py                      # 2 M lines, 20 s of live lag
    python bench/projections_bench.py --old /tmp/old-code  # the same for another checkout, taking turns

``--old`` names a checkout of an earlier version (``git worktree add /tmp/old-code <commit>``):
its rebuild and live projection are measured in the same run as this one's, on the
same logs, taking turns, so that the machine's drift hits both alike. It prints
one table:

* rebuild: lines/s of ``capture rebuild`` next to an orjson parse-only pass over
  the same segments (the ceiling, goal 1.0x); on a dense log (one line in four a
  user turn) next to its own ceiling, that pass plus ``executemany`` of one row
  per user turn into a table with the same unique index, in one transaction (goal
  0.5x); and on a log where every conversation is also fetched (REST) and
  delivered (webhook), each user turn seen three times;
* peak memory (RSS) of the rebuild (and of a read-ahead process, if the version
  has one) next to the log's size, and RSS at each quarter of the rebuild (flat
  means streaming); the CPU time used;
* live projection lag at a steady rate (default 1k frames/s): time from the
  append to the row being visible in SQLite, p50/p99/max (goal p99 <= 100 ms);
* a ``capture sql`` aggregate over the ``events`` view next to the same
  aggregate written directly with ``read_json`` (goal >= 0.9x);
* lines of code of ``projections/`` in each version.

Each measured pass runs in a fresh process (this script, ``--child``).
"""

from __future__ import annotations

import argparse
import functools
import os
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


ROOT = Path(__file__).resolve().parent.parent
# The code measured: this checkout, or the one --old names (set for a child by the parent).
CODE = Path(os.environ.get("CAPTURE_BENCH_CODE", ROOT))
sys.path.insert(0, str(CODE))

from ingest.log.envelope import Origin  # noqa: E402
from ingest.log.frames import Frame, inspect_frame  # noqa: E402
from ingest.log.writer import FsyncPolicy, LogWriter, events_dir  # noqa: E402


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


# --- the measures, each run in a fresh process -------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peaks() -> dict[str, float]:
    import resource

    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return {
        "peak_mb": own.ru_maxrss / 1024,
        "children_peak_mb": children.ru_maxrss / 1024,
        "cpu": sum(u.ru_utime + u.ru_stime for u in (own, children)),
    }


def _segments(data_dir: Path) -> list[Path]:
    from ingest.log.segments import list_segments

    return list_segments(events_dir(data_dir))


def measure_parse(data_dir: Path) -> dict[str, Any]:
    """The ceiling: orjson parses every line."""
    from ingest.log.reader import open_segment

    started = time.perf_counter()
    lines = 0
    for path in _segments(data_dir):
        with open_segment(path) as f:
            for raw in f:
                orjson.loads(raw)
                lines += 1
    return {"lines": lines, "elapsed": time.perf_counter() - started, **_peaks()}


_TABLE = """CREATE TABLE user_texts (
    id INTEGER PRIMARY KEY, dedup_key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, session_id TEXT,
    user_id TEXT NOT NULL, text TEXT NOT NULL, timestamp TEXT NOT NULL, metadata TEXT NOT NULL,
    sources TEXT NOT NULL, seq INTEGER NOT NULL)"""


def measure_parse_insert(data_dir: Path, db: Path) -> dict[str, Any]:
    """The dense ceiling: parse every line, ``executemany`` one row per user turn (unique key), one transaction."""
    from ingest.log.reader import open_segment

    db.unlink(missing_ok=True)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute(_TABLE)
    insert = "INSERT INTO user_texts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    started = time.perf_counter()
    lines = rows = 0
    batch: list[tuple[Any, ...]] = []
    conn.execute("BEGIN")
    for path in _segments(data_dir):
        with open_segment(path) as f:
            for raw in f:
                line = orjson.loads(raw)
                lines += 1
                event = line.get("event")
                kind = event.get("type") if type(event) is dict else None
                if kind != "user_transcript" and kind != "user_message":
                    continue
                text = (
                    event["text"]
                    if kind == "user_message"
                    else event["user_transcription_event"]["user_transcript"]
                )
                seq = line["seq"]
                batch.append((seq * 1_000_000, f"key:{seq}", kind, line["conversation_id"], "user", text,
                              line["received_at"], raw[raw.find(b',"event":') + 9 : -2].decode(), '["agent_ws"]', seq))  # fmt: skip
                if len(batch) == 20_000:
                    conn.executemany(insert, batch)
                    rows += len(batch)
                    batch.clear()
    conn.executemany(insert, batch)
    conn.execute("COMMIT")
    conn.close()
    return {"lines": lines, "rows": rows + len(batch), "elapsed": time.perf_counter() - started, **_peaks()}


def measure_rebuild(data_dir: Path, db: Path, total: int) -> dict[str, Any]:
    from projections import rebuild

    db.unlink(missing_ok=True)
    marks: dict[int, float] = {}

    def progress(seq: int) -> None:
        marks.setdefault(min(4, 4 * seq // total), _rss_mb())

    cpu = _peaks()["cpu"]
    report = rebuild(data_dir, db, progress=progress)
    return {
        "lines": report.lines_read,
        "rows": report.rows_written,
        "elapsed": report.elapsed,
        **_peaks(),
        "cpu": _peaks()["cpu"] - cpu,
        "quarters": [marks.get(q) for q in (1, 2, 3, 4)],
    }


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


def measure_views(data_dir: Path, repeats: int) -> dict[str, Any]:
    """Each aggregate over the view and written directly, taking turns; the fastest run of each."""
    from projections import open_analytics, run_query

    folder = events_dir(data_dir).resolve().as_posix()
    struct = "{" + ", ".join(f"'{c}': '{t}'" for c, t in ENVELOPE_TYPES.items()) + "}"
    direct = (
        f"(SELECT *, event->>'type' AS type FROM read_json('{folder}/*.jsonl',"
        f" format = 'newline_delimited', columns = {struct}))"
    )
    conn = open_analytics(data_dir)

    def timed(*queries: str) -> tuple[list[float], list[Any]]:
        best: list[float] = [float("inf")] * len(queries)
        rows: list[Any] = [None] * len(queries)
        for _ in range(repeats):
            for i, sql in enumerate(queries):
                started = time.perf_counter()
                rows[i] = list(run_query(conn, sql).rows)
                best[i] = min(best[i], time.perf_counter() - started)
        return best, rows

    results = []
    for name, template in AGGREGATES:
        (view_time, direct_time), (view_rows, direct_rows) = timed(
            template.format(src="events"), template.format(src=direct)
        )
        assert view_rows == direct_rows, (name, view_rows, direct_rows)
        results.append([name, view_time, direct_time])
    [count_time], [count_rows] = timed("SELECT count(*) FROM user_texts")
    return {"aggregates": results, "user_texts_view": count_time, "user_texts_rows": count_rows[0][0]}


def measure_lag(work: Path, seconds: float, rate: float) -> dict[str, Any]:
    """Append at ``rate`` lines/s for ``seconds``; measure append -> row visible in SQLite."""
    from projections.live import start_live_projection

    data_dir = work / "live"
    shutil.rmtree(data_dir, ignore_errors=True)
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
                latencies.append(now - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
                last = seq
            if finished:
                break
            time.sleep(0.002)
        conn.close()

    deadline = time.monotonic() + 10  # let the follower start before measuring
    while not db.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(1.0)
    poller = threading.Thread(target=poll)
    poller.start()
    appended = n = 0
    pending: list[tuple[Origin, Frame]] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if not pending:
            pending = conversation_lines(n)[::-1]
            n += 1
        origin, frame = pending.pop()
        writer.append(origin, frame, datetime.now(UTC))
        appended += 1
        pause = started + appended / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    elapsed = time.perf_counter() - started
    settle = time.monotonic() + 5  # the last rows, then stop everything
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
        "p50": pct(0.5),
        "p99": pct(0.99),
        "max": latencies[-1] * 1000,
    }


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "parse": lambda data_dir: measure_parse(Path(data_dir)),
    "parse_insert": lambda data_dir, db: measure_parse_insert(Path(data_dir), Path(db)),
    "rebuild": lambda data_dir, db, total: measure_rebuild(Path(data_dir), Path(db), int(total)),
    "views": lambda data_dir, repeats: measure_views(Path(data_dir), int(repeats)),
    "lag": lambda work, seconds, rate: measure_lag(Path(work), float(seconds), float(rate)),
}


def child(code: Path, name: str, *args: Any) -> dict[str, Any]:
    """Run one measure in a fresh interpreter on the code at ``code``; it prints one JSON object last."""
    env = {**os.environ, "CAPTURE_BENCH_CODE": str(code), "PYTHONPATH": str(code)}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", name, *map(str, args)],
        capture_output=True, text=True, cwd=code, env=env, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"bench child {name} failed:\n{done.stderr}")
    return orjson.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def best_of(runs: int, *measures: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run each measure ``runs`` times, taking turns; keep each one's fastest run (and the largest peaks).

    This machine is shared and its speed drifts: taking turns lets a slow or
    fast spell hit every measure alike.
    """
    results: list[list[dict[str, Any]]] = [[] for _ in measures]
    for _ in range(max(1, runs)):
        for done, measure in zip(results, measures, strict=True):
            done.append(measure())
    bests = []
    for done in results:
        best = dict(min(done, key=lambda r: r["elapsed"]))
        best["peak_mb"] = max(r["peak_mb"] for r in done)
        best["children_peak_mb"] = max(r["children_peak_mb"] for r in done)
        bests.append(best)
    return bests


def lines_of_code(code: Path) -> int:
    return sum(len(path.read_text().splitlines()) for path in (code / "projections").glob("*.py"))


def rate(result: dict[str, Any]) -> float:
    return float(result["lines"]) / float(result["elapsed"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=2_000_000, help="size of the typical log")
    parser.add_argument("--lag-seconds", type=float, default=20.0, help="duration of the live-lag run")
    parser.add_argument("--rate", type=float, default=1000.0, help="frames/s during the live-lag run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measure (the fastest is kept)")
    parser.add_argument(
        "--old", type=Path, default=None, help="a checkout of an earlier version to measure too"
    )
    parser.add_argument("--no-views", action="store_true", help="skip the views vs read_json measure")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to build the logs (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, *rest = args.child
        print(orjson.dumps(CHILDREN[name](*rest)).decode())
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(width=190)
    versions = [("this", ROOT)] + ([("old", args.old.resolve())] if args.old else [])
    work = Path(tempfile.mkdtemp(prefix="capture-bench-", dir=args.workdir))
    table = Table(title=f"capture projections bench: {args.lines:,}-line typical log")
    for column in ("measure", *(name for name, _ in versions), "reference", "goal"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    try:
        logs = [
            ("typical", args.lines, "parse"),
            ("dense", max(args.lines // 4, 10_000), "parse_insert"),
            ("every_source", max(args.lines // 4, 10_000), "parse"),
        ]
        for mix, size, ceiling_name in logs:
            data_dir = work / mix
            console.print(f"[dim]{mix}: generating ~{size:,} lines …[/dim]")
            total = generate(data_dir, size, mix)
            mib = sum(p.stat().st_size for p in events_dir(data_dir).iterdir()) / 2**20
            ceiling_args = (data_dir,) if ceiling_name == "parse" else (data_dir, work / "ceiling.db")
            console.print(
                f"[dim]{mix}: {total:,} lines, {mib:,.0f} MiB; ceiling and rebuilds, taking turns …[/dim]"
            )

            measures = [functools.partial(child, ROOT, ceiling_name, *ceiling_args)]
            measures += [
                functools.partial(child, code, "rebuild", data_dir, work / "rebuild.db", total)
                for _, code in versions
            ]
            ceiling, *built = best_of(args.repeats, *measures)
            goal = "1.0x" if mix == "typical" else "0.5x" if mix == "dense" else ""
            label = {"typical": "parse only", "dense": "parse + executemany", "every_source": "parse only"}[
                mix
            ]
            table.add_row(
                f"rebuild, {mix}: {total:,} lines, {built[0]['rows']:,} rows, {mib:,.0f} MiB (lines/s = x ceiling)",
                *(f"{rate(b):,.0f} = {rate(b) / rate(ceiling):.2f}x" for b in built),
                f"{rate(ceiling):,.0f} ({label})",
                goal,
            )
            if mix == "typical":
                table.add_row(
                    "  time / CPU (s)",
                    *(f"{b['elapsed']:.1f} / {b['cpu']:.1f}" for b in built),
                    f"{ceiling['elapsed']:.1f}",
                    "",
                )
                table.add_row(
                    "  peak RSS (MiB): rebuild + read-ahead process",
                    *(f"{b['peak_mb']:.0f} + {b['children_peak_mb']:.0f}" for b in built),
                    f"parse only {ceiling['peak_mb']:.0f}",
                    "flat",
                )
                table.add_row(
                    "  RSS at 25/50/75/100% (MiB)",
                    *(" / ".join(f"{q:.0f}" if q is not None else "-" for q in b["quarters"]) for b in built),
                    "",
                    "flat",
                )
                if not args.no_views:
                    console.print("[dim]views vs direct read_json …[/dim]")
                    views = child(ROOT, "views", data_dir, max(5, args.repeats))
            shutil.rmtree(data_dir, ignore_errors=True)
        console.print(f"[dim]live lag at {args.rate:,.0f} frames/s for {args.lag_seconds:.0f} s …[/dim]")
        lags = [child(code, "lag", work, args.lag_seconds, args.rate) for _, code in versions]
        table.add_row(
            f"live lag at {args.rate:,.0f} frames/s (ms): p50 / p99 / max",
            *(f"{lag['p50']:.1f} / {lag['p99']:.1f} / {lag['max']:.1f}" for lag in lags),
            f"{lags[0]['rows']:,} rows",
            "p99 <= 100 ms",
        )
        if not args.no_views:
            ratios = []
            for name, view_time, direct_time in views["aggregates"]:
                ratios.append(direct_time / view_time)
                table.add_row(
                    f"`events` view: {name} (s)",
                    f"{view_time:.3f} = {direct_time / view_time:.2f}x",
                    *([""] * (len(versions) - 1)),
                    f"{direct_time:.3f} (read_json)",
                    ">= 0.9x",
                )
            mean = 1.0
            for ratio in ratios:
                mean *= ratio
            table.add_row(
                "  views, geometric mean",
                f"{mean ** (1 / len(ratios)):.2f}x",
                *([""] * (len(versions) - 1)),
                "",
                ">= 0.9x",
            )
        table.add_row(
            "lines of code in projections/", *(f"{lines_of_code(code):,}" for _, code in versions), "", ""
        )
        console.print(table)
    finally:
        if args.keep:
            console.print(f"[dim]kept {work}[/dim]")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
