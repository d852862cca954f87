"""Shared material for the projection tests: real log lines, a hypothesis strategy, a reference model.

The reference model is the user-texts rule written the plainest way (a dict of
rows, first line wins), independently of ``projections.user_texts``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from hypothesis import strategies as st

from ingest.envelope import LogLine, Origin, decode_line, encode_line
from ingest.frames import inspect_frame
from ingest.log import events_dir
from ingest.segments import segment_name
from tests.conftest import TIMEOUT_FACTOR


STAMP = "2026-11-25T12:00:00.{:06d}Z"
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


# --- a hypothesis strategy: frames over several connections ------------------------------------

# Few values, so that resends, repeats and shared event ids happen often.
TEXTS = st.sampled_from(["yes", "yes", "Olá", "  ", "", "\u3000", "I need help", "yes "])
EVENT_IDS = st.one_of(st.integers(0, 2), st.sampled_from(["e1", None, True, 2.5]))
CONNECTIONS = st.integers(0, 1)


@dataclass(frozen=True)
class Step:
    """One generated event: what to log (``kind``) on which connection, and how."""

    kind: str
    connection: int
    value: Any = None
    event_id: Any = None
    wrong_direction: bool = False


STEP = st.one_of(
    st.builds(Step, st.just("init"), CONNECTIONS, st.sampled_from(["u-a", "u-b", "", None, 7])),
    st.builds(Step, st.just("metadata"), CONNECTIONS),
    st.builds(Step, st.just("transcript"), CONNECTIONS, TEXTS, EVENT_IDS, st.booleans()),
    st.builds(Step, st.just("transcript_no_text"), CONNECTIONS, st.sampled_from([None, 5])),
    st.builds(Step, st.just("message"), CONNECTIONS, st.one_of(TEXTS, st.none()), st.none(), st.booleans()),
    st.builds(Step, st.just("other"), CONNECTIONS, st.sampled_from(["agent", "tentative", "raw", "bytes"])),
    st.builds(Step, st.just("replay"), CONNECTIONS, st.integers(0, 50)),
    st.builds(Step, st.just("gap"), CONNECTIONS, st.integers(1, 3)),
)


def build_log(steps: Sequence[Step]) -> list[bytes]:
    """Turn steps into log lines: seq +1 per line, with the gaps and replays the steps ask for."""
    lines: list[bytes] = []
    conversations: dict[int, str | None] = {}
    seq = 0
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
        seq += 1
        frame: str | bytes
        direction_in = "out" if step.wrong_direction else "in"
        direction_out = "in" if step.wrong_direction else "out"
        if step.kind == "init":
            frame, direction = init(step.value), "out"
        elif step.kind == "metadata":
            conv = f"conv-{step.connection}-{seq}"
            conversations[step.connection] = conv
            frame, direction = metadata(conv), "in"
        elif step.kind == "transcript":
            frame, direction = transcript(step.value, step.event_id), direction_in
        elif step.kind == "transcript_no_text":
            frame, direction = transcript(step.value, 1), "in"
        elif step.kind == "message":
            frame, direction = message(step.value), direction_out
        elif step.value == "agent":
            frame, direction = (
                '{"type":"agent_response","agent_response_event":{"agent_response":"hi"}}',
                "in",
            )
        elif step.value == "tentative":
            frame = orjson.dumps(
                {
                    "type": "tentative_user_transcript",
                    "tentative_user_transcription_event": {"user_transcript": "x"},
                }
            ).decode()
            direction = "in"
        elif step.value == "raw":
            frame, direction = "not json {", "in"
        else:
            frame, direction = b"\x00\x01binary", "in"
        lines.append(encode(seq, frame, direction=direction, connection_id=conn, conversation_id=conv))
    return lines


@dataclass
class Reference:
    """What the model says a log gives."""

    rows: list[tuple[Any, ...]]  # (kind, session_id, user_id, text, timestamp, seq) per kept row
    skipped: dict[str, int]  # duplicate_line, no_text, empty_text (not duplicate_turn)
    gaps: list[tuple[int, int]]  # (after_seq, next_seq)


BLANK = " \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
BLANK += "\u200b\u200c\u200d\u2060\ufeff" + "".join(chr(c) for c in range(0x2000, 0x200B))


def reference(raw_lines: Sequence[bytes]) -> Reference:
    """The rule, plainly."""
    rows: dict[Any, tuple[Any, ...]] = {}
    skipped: dict[str, int] = {}
    gaps: list[tuple[int, int]] = []
    users: dict[str, str] = {}
    last = 0

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for raw in raw_lines:
        envelope = orjson.loads(raw)
        seq = envelope["seq"]
        if seq <= last:
            skip("duplicate_line")
            continue
        if seq != last + 1:
            gaps.append((last, seq))
        last = seq
        event = envelope.get("event")
        if not isinstance(event, dict):
            continue
        kind, direction = event.get("type"), envelope["direction"]
        conn, conv = envelope["connection_id"], envelope["conversation_id"]
        if kind == "conversation_initiation_client_data" and direction == "out":
            if isinstance(event.get("user_id"), str) and event["user_id"]:
                users[conn] = event["user_id"]
            continue
        event_id = None
        if kind == "user_transcript" and direction == "in":
            text = event["user_transcription_event"].get("user_transcript")
            candidate = event["user_transcription_event"].get("event_id")
            if isinstance(candidate, int | str) and not isinstance(candidate, bool):
                event_id = str(candidate)
        elif kind == "user_message" and direction == "out":
            text = event.get("text")
        else:
            continue
        if not isinstance(text, str):
            skip("no_text")
            continue
        if not text.strip(BLANK):
            skip("empty_text")
            continue
        if kind == "user_transcript" and conv is not None and event_id is not None:
            key: Any = ("transcript", conv, event_id, text)
        else:
            key = ("line", seq)
        if key in rows:
            continue
        user_id = users.get(conn) or (event.get("user_id") if isinstance(event.get("user_id"), str) else None)
        rows[key] = (kind, conv, user_id or "eleven_user", text, envelope["received_at"], seq)
    return Reference(list(rows.values()), skipped, gaps)
