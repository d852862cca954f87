"""Shared material for the projection tests: real log lines, a hypothesis strategy, a reference model.

The reference model is the user-texts rule written the plainest way, and the
other way round from ``projections.rule``: it collects every sighting of
the whole log first and then groups them (as the DuckDB view does), where the
fold merges them into rows one batch at a time.
"""

from __future__ import annotations

import json
import math
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from hypothesis import strategies as st

from ingest.log.envelope import LogLine, Origin, decode_line, encode_line
from ingest.log.frames import inspect_frame
from ingest.log.segments import RotationPolicy, segment_name
from ingest.log.writer import FsyncPolicy, LogWriter, events_dir
from projections.rule import (
    FoldResult,
    UserTextRow,
    entry_key,
    line_key,
    spoken_key,
    typed_key,
)
from projections.sqlite import iter_rows
from tests.conftest import TIMEOUT_FACTOR


STAMP = "2026-11-25T12:00:00.{:06d}Z"
CALL_START = 1_795_607_999  # 2026-11-25T11:59:59Z: REST turn times fall before and after the live stamps
WS = " \t\n\u3000\u200b\xa0"  # a few of the characters the rule treats as blank


def stamp(seq: int) -> str:
    return STAMP.format(seq % 1_000_000)


def encode(
    seq: int,
    frame: str | bytes,
    *,
    direction: str = "in",
    connection_id: str | None = "conn-1",
    conversation_id: str | None = "conv_1",
    source: str = "agent_ws",
    received_at: str | None = None,
) -> bytes:
    """One log line exactly as the writer makes it."""
    origin = Origin(source, direction, "agent_x", connection_id, conversation_id)  # type: ignore[arg-type]
    return encode_line(seq, received_at or stamp(seq), origin, inspect_frame(frame))


def line(seq: int, frame: str | bytes, **kwargs: Any) -> LogLine:
    return decode_line(encode(seq, frame, **kwargs))


def transcript(text: Any, event_id: Any = 1, **extra: Any) -> str:
    inner: dict[str, Any] = {"user_transcript": text}
    if event_id is not None:
        inner["event_id"] = event_id
    return orjson.dumps({"type": "user_transcript", "user_transcription_event": inner, **extra}).decode()


def message(text: Any) -> str:
    return orjson.dumps({"type": "user_message", "text": text}).decode()


def init(user_id: Any = None) -> str:
    frame: dict[str, Any] = {"type": "conversation_initiation_client_data"}
    if user_id is not None:
        frame["user_id"] = user_id
    return orjson.dumps(frame).decode()


def metadata(conversation_id: str) -> str:
    return orjson.dumps(
        {
            "type": "conversation_initiation_metadata",
            "conversation_initiation_metadata_event": {"conversation_id": conversation_id},
        }
    ).decode()


def closed() -> str:
    """capture's own record of a connection's end."""
    return '{"type":"connection_closed","close_code":1000,"close_reason":"","closed_by":"server"}'


def user_entry(text: Any, at: Any, medium: Any = "audio", event_id: Any = None) -> dict[str, Any]:
    """A transcript entry of the GET-conversation model, role user."""
    entry: dict[str, Any] = {
        "role": "user",
        "message": text,
        "time_in_call_secs": at,
        "source_medium": medium,
    }
    if event_id is not None:
        entry["source_event_id"] = event_id
    return entry


def conversation_body(
    conversation_id: str | None,
    entries: Sequence[dict[str, Any]],
    *,
    start: Any = CALL_START,
    user_id: Any = "user-rest",
) -> dict[str, Any]:
    """A GET-conversation body (REST), also a transcription webhook's ``data``."""
    body: dict[str, Any] = {"agent_id": "agent_x", "status": "done", "user_id": user_id}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    body["transcript"] = [{"role": "agent", "message": "Hello!", "time_in_call_secs": 0}, *entries]
    body["metadata"] = {"start_time_unix_secs": start, "call_duration_secs": 30}
    return body


def webhook(data: dict[str, Any], kind: str = "post_call_transcription", *, pretty: bool = False) -> str:
    """A webhook delivery's body; ``pretty`` writes it over several lines (logged under ``raw``)."""
    payload = {"type": kind, "event_timestamp": CALL_START + 60, "data": data}
    if pretty:
        return json.dumps(payload, indent=2, ensure_ascii=False)
    return orjson.dumps(payload).decode()


def call_time(seconds: float) -> str:
    """A REST/webhook turn time, ``CALL_START`` plus ``seconds``."""
    return datetime.fromtimestamp(CALL_START + seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_segments(data_dir: Path, segments: Sequence[bytes], first_seqs: Sequence[int]) -> None:
    """Write raw segment files (for logs a writer would never make: gaps, duplicates, torn lines)."""
    folder = events_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for first, data in zip(first_seqs, segments, strict=True):
        (folder / segment_name(first)).write_bytes(data)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` seconds (scaled by the test factor)."""
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def dump(db: Path) -> list[tuple[Any, ...]]:
    """The rows of a SQLite user_texts table, in id order."""
    return list(iter_rows(db))


def state_row(db: Path) -> tuple[Any, ...]:
    conn = sqlite3.connect(db)
    try:
        return tuple(conn.execute("SELECT last_seq, lines, rows, skipped FROM projection_state").fetchone())
    finally:
        conn.close()


def projected_seq(db: Path) -> int:
    """The stored position of a SQLite table (0 while it cannot be read)."""
    try:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=1)
        try:
            return int(conn.execute("SELECT last_seq FROM projection_state").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def small_log(data_dir: Path) -> None:
    """Two conversations, a resend, a blank, rotation across three segments: 16 lines, 6 rows."""
    with LogWriter.open(data_dir, fsync=FsyncPolicy.NEVER, rotation=RotationPolicy(max_bytes=600)) as writer:
        for n, user in ((1, "user-1"), (2, None)):
            conn = f"conn-{n}"
            out = Origin("agent_ws", "out", "agent_x", conn, None)
            writer.append(out, inspect_frame(init(user)))
            writer.append(
                Origin("agent_ws", "in", "agent_x", conn, None), inspect_frame(metadata(f"conv_{n}"))
            )
            got = Origin("agent_ws", "in", "agent_x", conn, f"conv_{n}")
            sent = Origin("agent_ws", "out", "agent_x", conn, f"conv_{n}")
            writer.append(got, inspect_frame(transcript("I need help", 1)))
            writer.append(got, inspect_frame(transcript("I need help", 1)))  # resent
            writer.append(
                got, inspect_frame('{"type":"agent_response","agent_response_event":{"agent_response":"ok"}}')
            )
            writer.append(sent, inspect_frame(message("yes")))
            writer.append(sent, inspect_frame(message("yes")))
            writer.append(sent, inspect_frame(message(" ")))


def run_in_child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill(child: subprocess.Popen[bytes]) -> None:
    assert child.poll() is None, "the child finished before it could be killed: make the log bigger"
    child.send_signal(signal.SIGKILL)
    child.wait(10)


class MemoryTable:
    """The table as a dict, for folding without SQLite: a :class:`~projections.rule.TableView`."""

    def __init__(self) -> None:
        self.by_key: dict[str, UserTextRow] = {}
        self.alias_of: dict[str, str] = {}

    def rows(self, keys: Collection[str]) -> Mapping[str, UserTextRow]:
        return {key: self.by_key[key] for key in keys if key in self.by_key}

    def aliases(self, keys: Collection[str]) -> Mapping[str, str]:
        return {key: self.alias_of[key] for key in keys if key in self.alias_of}

    def apply(self, result: FoldResult) -> None:
        changed = result.rows + result.updated
        assert not {row.id for row in result.rows} & {row.id for row in self.by_key.values()}, "an id twice"
        gone = set(result.deleted) | {row.id for row in changed}
        self.by_key = {key: row for key, row in self.by_key.items() if row.id not in gone}
        for row in changed:
            assert row.dedup_key not in self.by_key, "two rows with one key"
            self.by_key[row.dedup_key] = row
        for alias, key in result.aliases.items():
            self.alias_of.setdefault(alias, key)

    def table(self) -> list[UserTextRow]:
        return sorted(self.by_key.values())


# --- a hypothesis strategy: frames of every source over a few conversations -----------------

# Few values, so that resends, repeats, shared ids and cross-source matches happen often.
TEXTS = st.sampled_from(["yes", "yes", "Olá", "  ", "", "\u3000", "I need help", "yes ", "I  need\xa0help"])
EVENT_IDS = st.one_of(st.integers(0, 2), st.sampled_from(["e1", "1", None, True, 2.5]))
CONNECTIONS = st.integers(0, 1)
CONVERSATIONS = st.sampled_from(["conv-a", "conv-b"])
MEDIA = st.sampled_from(["audio", "text", "text", "image", None, 5])
OFFSETS = st.one_of(st.integers(0, 100), st.sampled_from([None, True, 2.5, 0.1234567, -1, "3", 1e10]))
STARTS = st.one_of(st.just(CALL_START), st.sampled_from([None, CALL_START + 0.25, -5, "x", 10**13, True]))
USER_IDS = st.sampled_from(["u-a", "u-b", "", None, 7])

ENTRY = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "user", "user", "agent", None]),
        "message": st.one_of(TEXTS, TEXTS, st.none(), st.just(3)),
        "source_medium": MEDIA,
    },
    optional={"source_event_id": EVENT_IDS, "time_in_call_secs": OFFSETS},
)
BODY = st.fixed_dictionaries(
    {"conversation_id": st.one_of(CONVERSATIONS, CONVERSATIONS, st.none())},
    optional={
        "transcript": st.one_of(st.lists(ENTRY, max_size=6), st.lists(ENTRY, max_size=6), st.just("none")),
        "user_id": USER_IDS,
        "metadata": st.fixed_dictionaries({}, optional={"start_time_unix_secs": STARTS}),
        "conversation_initiation_client_data": st.fixed_dictionaries({}, optional={"user_id": USER_IDS}),
    },
)
# A REST/webhook transcript of the turns logged live so far (what the API would answer),
# with each monitored turn's medium and each typed turn's id drawn, and maybe one turn left out.
MIRROR = st.tuples(
    CONVERSATIONS,
    st.lists(MEDIA, min_size=1, max_size=4),
    st.lists(EVENT_IDS, min_size=1, max_size=4),
    st.lists(OFFSETS, min_size=1, max_size=4),
    st.one_of(st.none(), st.integers(0, 5)),
    STARTS,
)


@dataclass(frozen=True)
class Step:
    """One generated event: what to log (``kind``) on which connection, and how."""

    kind: str
    connection: int
    value: Any = None
    event_id: Any = None
    wrong_direction: bool = False


STEP = st.one_of(
    st.builds(Step, st.just("init"), CONNECTIONS, USER_IDS),
    st.builds(Step, st.just("metadata"), CONNECTIONS, CONVERSATIONS),
    st.builds(Step, st.just("transcript"), CONNECTIONS, TEXTS, EVENT_IDS, st.booleans()),
    st.builds(Step, st.just("transcript_no_text"), CONNECTIONS, st.sampled_from([None, 5])),
    st.builds(Step, st.just("message"), CONNECTIONS, st.one_of(TEXTS, st.none()), st.none(), st.booleans()),
    st.builds(Step, st.just("other"), CONNECTIONS, st.sampled_from(["agent", "tentative", "raw", "bytes"])),
    st.builds(Step, st.just("close"), CONNECTIONS),
    st.builds(Step, st.just("monitor"), CONNECTIONS, st.tuples(CONVERSATIONS, TEXTS), EVENT_IDS),
    st.builds(Step, st.just("echo"), CONNECTIONS, st.none(), EVENT_IDS),
    st.builds(Step, st.just("rest"), CONNECTIONS, BODY),
    st.builds(
        Step,
        st.just("webhook"),
        CONNECTIONS,
        BODY,
        st.sampled_from(["post_call_transcription", "post_call_transcription", "call_initiation_failure"]),
        st.booleans(),
    ),
    st.builds(Step, st.just("again"), CONNECTIONS, st.integers(0, 20), st.sampled_from(["rest", "webhook"])),
    st.builds(
        Step, st.just("mirror"), CONNECTIONS, MIRROR, st.sampled_from(["rest", "webhook"]), st.booleans()
    ),
    st.builds(
        Step, st.just("mirror"), CONNECTIONS, MIRROR, st.sampled_from(["rest", "webhook"]), st.booleans()
    ),
    st.builds(Step, st.just("replay"), CONNECTIONS, st.integers(0, 50)),
    st.builds(Step, st.just("gap"), CONNECTIONS, st.integers(1, 3)),
)


def _other_frame(value: str) -> str | bytes:
    if value == "agent":
        return '{"type":"agent_response","agent_response_event":{"agent_response":"hi"}}'
    if value == "tentative":
        return orjson.dumps(
            {
                "type": "tentative_user_transcript",
                "tentative_user_transcription_event": {"user_transcript": "x"},
            }
        ).decode()
    return "not json {" if value == "raw" else b"\x00\x01binary"


def build_log(steps: Sequence[Step]) -> list[bytes]:
    """Turn steps into log lines: seq +1 per line, with the gaps and replays the steps ask for."""
    lines: list[bytes] = []
    conversations: dict[int, str | None] = {0: "conv-a", 1: "conv-b"}  # as if metadata came first
    bodies: list[dict[str, Any]] = []
    turns: dict[str, list[list[Any]]] = {}  # conversation -> [how, text, event id] per turn logged live
    seq = 0

    def add(frame: str | bytes, **kwargs: Any) -> None:
        lines.append(encode(seq, frame, **kwargs))

    for step in steps:
        conn = f"conn-{step.connection}"
        conv = conversations.get(step.connection)
        if step.kind == "replay":
            if lines:
                lines.append(lines[step.value % len(lines)])
            continue
        if step.kind == "gap":
            seq += step.value
            continue
        if step.kind == "again" and not bodies:
            continue
        if step.kind == "echo" and not turns.get(conv or ""):
            continue
        if step.kind in ("transcript", "message") and conv is not None:
            turns.setdefault(conv, []).append([step.kind, step.value, step.event_id])
        elif step.kind == "monitor":
            turns.setdefault(step.value[0], []).append(["monitor", step.value[1], step.event_id])
        seq += 1
        direction_in = "out" if step.wrong_direction else "in"
        direction_out = "in" if step.wrong_direction else "out"
        if step.kind == "init":
            add(init(step.value), direction="out", connection_id=conn, conversation_id=conv)
        elif step.kind == "metadata":
            conversations[step.connection] = step.value
            add(metadata(step.value), connection_id=conn, conversation_id=conv)
        elif step.kind == "transcript":
            add(
                transcript(step.value, step.event_id),
                direction=direction_in,
                connection_id=conn,
                conversation_id=conv,
            )
        elif step.kind == "transcript_no_text":
            add(transcript(step.value, 1), connection_id=conn, conversation_id=conv)
        elif step.kind == "message":
            add(message(step.value), direction=direction_out, connection_id=conn, conversation_id=conv)
        elif step.kind == "other":
            add(_other_frame(step.value), connection_id=conn, conversation_id=conv)
        elif step.kind == "close":
            add(closed(), source="capture", connection_id=conn, conversation_id=conv)
            conversations.pop(step.connection, None)
        elif step.kind == "monitor":
            conversation_id, text = step.value
            add(transcript(text, step.event_id), source="monitor", connection_id=f"mon-{step.connection}",
                conversation_id=conversation_id)  # fmt: skip
        elif step.kind == "rest":
            bodies.append(step.value)
            add(orjson.dumps(step.value).decode(), source="rest", connection_id=None,
                conversation_id=_conversation_of(step.value))  # fmt: skip
        elif step.kind == "webhook":
            bodies.append(step.value)
            add(webhook(step.value, step.event_id, pretty=step.wrong_direction), source="webhook",
                connection_id=f"hook-{seq}", conversation_id=_conversation_of(step.value))  # fmt: skip
        elif step.kind == "echo":
            # The monitor sees the connection's last turn too; typed, it shows it with an id of its own.
            assert conv is not None
            turn = turns[conv][-1]
            if turn[0] == "message":
                turn[2] = step.event_id
            add(transcript(turn[1], turn[2]), source="monitor", connection_id=f"mon-{step.connection}",
                conversation_id=conv)  # fmt: skip
        elif step.kind == "mirror":
            body = _mirror(turns, *step.value)
            bodies.append(body)
            frame = (
                orjson.dumps(body).decode()
                if step.event_id == "rest"
                else webhook(body, pretty=step.wrong_direction)
            )
            add(frame, source=step.event_id, connection_id=None, conversation_id=body["conversation_id"])
        else:  # again: an earlier body, refetched or delivered again
            body = bodies[step.value % len(bodies)]
            frame = orjson.dumps(body).decode() if step.event_id == "rest" else webhook(body)
            add(frame, source=step.event_id, connection_id=None, conversation_id=_conversation_of(body))
    return lines


def _mirror(
    turns: dict[str, list[list[Any]]],
    conversation_id: str,
    media: list[Any],
    event_ids: list[Any],
    offsets: list[Any],
    drop: int | None,
    start: Any,
) -> dict[str, Any]:
    entries = []
    for i, (how, text, event_id) in enumerate(turns.get(conversation_id, [])):
        if i == drop:
            continue
        if how == "message":
            medium = "text"
            if event_id is None:
                event_id = event_ids[i % len(event_ids)]
        elif how == "transcript":
            medium = "audio"
        else:
            medium = media[i % len(media)]
        entries.append(user_entry(text, offsets[i % len(offsets)], medium, event_id))
    return conversation_body(conversation_id, entries, start=start)


def _conversation_of(body: dict[str, Any]) -> str | None:
    value = body.get("conversation_id")
    return value if isinstance(value, str) else None


# --- the reference model ------------------------------------------------------------------------

BLANK = " \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
BLANK += "\u200b\u200c\u200d\u2060\ufeff" + "".join(chr(c) for c in range(0x2000, 0x200B))


def _normal(text: str) -> str:
    words: list[str] = []
    word = ""
    for char in text:
        if char in BLANK:
            if word:
                words.append(word)
            word = ""
        else:
            word += char
    return " ".join([*words, word] if word else words)


def _when(start: Any, offset: Any, received_at: str) -> str:
    numbers = all(type(v) in (int, float) for v in (start, offset))
    if not numbers or not (0 <= start <= 253_402_300_799 and 0 <= offset <= 1e9):
        return received_at
    micros = math.floor(start * 1e6 + 0.5) + math.floor(offset * 1e6 + 0.5)
    moment = datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Seen:
    """One sighting, as the model finds it."""

    place: tuple[int, int]
    key: Any
    spoken: bool
    alias: Any
    source: str
    entry: int | None
    medium: str | None
    user_id: str | None
    conversation_id: str | None
    text: str
    when: str
    raw_event: str
    event_id: Any


@dataclass
class Reference:
    """What the model says a log gives."""

    rows: list[UserTextRow]
    skipped: dict[str, int]  # duplicate_line, no_text, empty_text (not duplicate_turn)
    gaps: list[tuple[int, int]]  # (after_seq, next_seq)
    sightings: int


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _nonempty(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _event_id(value: Any) -> Any:
    return value if isinstance(value, int | str) and not isinstance(value, bool) else None


def _key_text(key: Any) -> str:
    kind, *parts = key
    if kind == "spoken":
        return spoken_key(*parts)
    if kind == "typed":
        return typed_key(*parts)
    if kind == "entry":
        return entry_key(*parts)
    return line_key(*parts)


def reference(raw_lines: Sequence[bytes]) -> Reference:
    """The rule, plainly: every sighting first, then one row per key."""
    seen: list[Seen] = []
    skipped: dict[str, int] = {}
    gaps: list[tuple[int, int]] = []
    users: dict[str, str] = {}
    typed: dict[tuple[Any, ...], int] = {}
    epoch: dict[str, int] = {}
    last = 0

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    def text_of(value: Any) -> str | None:
        if not isinstance(value, str):
            skip("no_text")
            return None
        if not value.strip(BLANK):
            skip("empty_text")
            return None
        return value

    for raw in raw_lines:
        envelope = orjson.loads(raw)
        seq = envelope["seq"]
        if seq <= last:
            skip("duplicate_line")
            continue
        if seq != last + 1:
            gaps.append((last, seq))
        last = seq
        source, direction = envelope["source"], envelope["direction"]
        conn, conv, at = envelope["connection_id"], envelope["conversation_id"], envelope["received_at"]
        event = envelope.get("event")
        if source in ("rest", "webhook"):
            body = event if event is not None else _json(envelope.get("raw"))
            if source == "webhook":
                body = (
                    body.get("data")
                    if isinstance(body, dict) and body.get("type") == "post_call_transcription"
                    else None
                )
            if not isinstance(body, dict) or not isinstance(body.get("transcript"), list):
                continue
            body_conv = _string(body.get("conversation_id"))
            body_conv = conv if body_conv is None else body_conv
            meta = body.get("metadata")
            start = meta.get("start_time_unix_secs") if isinstance(meta, dict) else None
            init_data = body.get("conversation_initiation_client_data")
            user = _nonempty(body.get("user_id")) or (
                _nonempty(init_data.get("user_id")) if isinstance(init_data, dict) else None
            )
            counts: dict[Any, int] = {}
            for index, entry in enumerate(body["transcript"]):
                if not isinstance(entry, dict) or entry.get("role") != "user":
                    continue
                text = text_of(entry.get("message"))
                if text is None:
                    continue
                raw_medium = _string(entry.get("source_medium"))
                medium = raw_medium if raw_medium in ("audio", "text") else None
                event_id = _event_id(entry.get("source_event_id"))
                normal, alias, spoken = _normal(text), None, False
                if body_conv is None:
                    key: Any = ("line", seq, index)
                elif medium == "text":
                    counts["typed", normal] = n = counts.get(("typed", normal), 0) + 1
                    key = ("typed", body_conv, normal, n)
                    if event_id is not None:
                        alias = ("spoken", body_conv, str(event_id), normal)
                elif event_id is not None:
                    key, spoken = ("spoken", body_conv, str(event_id), normal), True
                else:
                    scope = ("entry", raw_medium or "", normal)
                    counts[scope] = n = counts.get(scope, 0) + 1
                    key = ("entry", body_conv, raw_medium or "", normal, n)
                when = _when(start, entry.get("time_in_call_secs"), at)
                seen.append(
                    Seen((seq, index), key, spoken, alias, source, index, medium, user, body_conv, text, when, "null", event_id)
                )  # fmt: skip
            continue
        if not isinstance(event, dict):
            continue
        kind = event.get("type")
        if source == "capture" and kind == "connection_closed" and direction == "in":
            if isinstance(conn, str):
                users.pop(conn, None)
                epoch[conn] = epoch.get(conn, 0) + 1
            continue
        if source == "agent_ws" and kind == "conversation_initiation_client_data" and direction == "out":
            if isinstance(conn, str) and _nonempty(event.get("user_id")):
                users[conn] = event["user_id"]
            continue
        if kind == "user_transcript" and direction == "in" and source in ("agent_ws", "monitor"):
            inner = event.get("user_transcription_event")
            if not isinstance(inner, dict):
                skip("no_text")
                continue
            text, typed_turn = text_of(inner.get("user_transcript")), False
            event_id = _event_id(inner.get("event_id"))
            medium = "audio" if source == "agent_ws" else None
        elif kind == "user_message" and direction == "out" and source == "agent_ws":
            text, typed_turn, event_id, medium = text_of(event.get("text")), True, None, "text"
        else:
            continue
        if text is None:
            continue
        normal, spoken = _normal(text), False
        if conv is None:
            key = ("line", seq)
        elif typed_turn:
            counted = (conn, epoch.get(conn, 0), conv, normal)
            typed[counted] = n = typed.get(counted, 0) + 1
            key = ("typed", conv, normal, n)
        elif event_id is not None:
            key, spoken = ("spoken", conv, str(event_id), normal), True
        else:
            key = ("line", seq)
        user = (users.get(conn) if isinstance(conn, str) else None) or _nonempty(event.get("user_id"))
        frame = raw.rstrip(b"\n")
        raw_event = frame[frame.index(b',"event":') + 9 : -1].decode()
        seen.append(
            Seen((seq, 0), key, spoken, None, source, None, medium, user, conv, text, at, raw_event, event_id)
        )

    aliases: dict[Any, Any] = {}
    for s in sorted(seen, key=lambda s: s.place):
        if s.alias is not None:
            aliases.setdefault(s.alias, s.key)
    groups: dict[Any, list[Seen]] = {}
    for s in seen:
        groups.setdefault(aliases.get(s.key, s.key) if s.spoken else s.key, []).append(s)
    rows = [_row(key, sorted(group, key=lambda s: s.place)) for key, group in groups.items()]
    return Reference(sorted(rows), skipped, gaps, len(seen))


def _row(key: Any, group: list[Seen]) -> UserTextRow:
    first = group[0]
    medium = next((s.medium for s in group if s.medium is not None), None)
    records = [[s.source, s.place[0], s.entry, s.medium, s.user_id] for s in group]
    head = {
        "seq": first.place[0],
        "source": first.source,
        "event_id": first.event_id,
        "entry": first.entry,
        "sightings": records,
    }
    metadata = '{"raw_event":' + first.raw_event + "," + orjson.dumps(head).decode()[1:]
    return UserTextRow(
        first.place[0] * 1_000_000 + first.place[1],
        _key_text(key),
        "user_message" if medium == "text" else "user_transcript",
        first.conversation_id,
        next((s.user_id for s in group if s.user_id is not None), "eleven_user"),
        first.text,
        min(s.when for s in group),
        metadata,
        orjson.dumps(sorted({s.source for s in group})).decode(),
        first.place[0],
    )


def _json(raw: Any) -> Any:
    if not isinstance(raw, str):
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
