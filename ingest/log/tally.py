"""Counting what a running log gains, by source, direction and frame type, off the receive path.

The metrics endpoint needs frames by source and type; the receive paths keep
only totals, and a count per frame there would be work on the hottest path.
The log already holds every frame with its source, direction and type, so
:class:`LogTally` reads what was appended since its last look (a seek, one
read of the new bytes, one regular expression and a ``Counter`` over them,
both in C: about 1.4 µs a line). The metrics endpoint runs it in a process of
its own (:mod:`ingest.observe.tally_process`), so that it takes nothing from
the writing process's GIL.

Labels are a bounded set: a type the platform documents (:data:`KNOWN_TYPES`)
is itself, any other ``other``; a frame without a type (a REST conversation)
is ``none``, and one that is not a JSON object (kept as ``raw``/``raw_b64``)
``not_json``. Sources outside :data:`KNOWN_SOURCES` count as ``other``: what a
peer sends never becomes a label.

"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from ingest.log.envelope import EVENT_KEY
from ingest.log.segments import first_seq_of, list_segments


__all__ = ["KNOWN_SOURCES", "KNOWN_TYPES", "LogTally", "TallyKey"]

#: (source, direction, type): one counter of the tally.
TallyKey = tuple[str, str, str]

#: The sources that write the log (``capture`` is capture's own record of a connection's end).
KNOWN_SOURCES = frozenset({"agent_ws", "relay", "webhook", "rest", "monitor", "capture"})

#: Frame types documented for the agent socket (both ways), the monitor socket,
#: post-call webhooks, and capture's own lines.
KNOWN_TYPES = frozenset(
    {
        # the platform to the client
        "conversation_initiation_metadata",
        "user_transcript",
        "tentative_user_transcript",
        "agent_response",
        "agent_response_correction",
        "agent_chat_response_part",
        "agent_reasoning_response_part",
        "audio",
        "interruption",
        "ping",
        "client_tool_call",
        "agent_tool_request",
        "agent_tool_response",
        "agent_tool_response_full_payload",
        "mcp_tool_call",
        "mcp_connection_status",
        "vad_score",
        "internal_tentative_agent_response",
        "internal_turn_probability",
        "context_usage",
        "asr_initiation_metadata",
        "guardrail_triggered",
        "rich_content",
        "agent_typing",
        "external_agent_connected",
        "external_agent_disconnected",
        "error",
        "queue_status",
        # the client to the platform
        "conversation_initiation_client_data",
        "pong",
        "user_message",
        "user_activity",
        "contextual_update",
        "client_tool_result",
        "feedback",
        "mcp_tool_approval_result",
        "multimodal_message",
        # the monitor socket's own
        "connected",
        "history_complete",
        # post-call webhooks
        "post_call_transcription",
        "post_call_transcription_otel",
        "post_call_audio",
        "call_initiation_failure",
        # capture's own
        "connection_closed",
    }
)

# The start of one log line: a newline, then the envelope's own fields in their
# fixed order (capture writes them; ids are JSON strings, which hold no raw
# newline nor unescaped quote), up to the frame's first key. A frame holds no
# raw newline, so nothing inside one can pass for a line; the text searched
# begins with a newline of its own.
_LINE = re.compile(
    rb'\n\{"seq":\d+,"received_at":"[^"\n]*","source":"([^"\\\n]{0,64})","direction":"(in|out)",'
    rb'(?:"[a-z_]+":(?:null|"[^"\\\n]*"),)*"crc32":\d+,"(event|raw|raw_b64)":(?:\{"type":"([^"\\\n]{1,64})")?'
)


def _type_label(kind: bytes | None, frame_key: bytes, line: bytes | None) -> str:
    if frame_key != b"event":
        return "not_json"
    if kind is None:
        # "type" is not the frame's first key (or is escaped): look properly.
        at = line.find(EVENT_KEY) if line is not None else -1
        try:
            # The frame runs to the envelope's closing brace, before the newline.
            frame: Any = (
                orjson.loads(line[at + len(EVENT_KEY) : -2]) if line is not None and at >= 0 else None
            )
        except orjson.JSONDecodeError:
            frame = None
        value = frame.get("type") if isinstance(frame, dict) else None
        if not isinstance(value, str):
            return "none"
        text = value
    else:
        text = kind.decode("utf-8", "replace")
    return text if text in KNOWN_TYPES else "other"


class LogTally:
    """Counts the lines appended to a log after a position, by (source, direction, type).

    Args:
        events_dir: The log's folder.
        segment: The segment holding the position (the writer's active one).
        offset: The byte offset in it from which to count (its size when the
            writer opened it: what is already there is not counted).

    Attributes:
        counts: Lines counted so far, by key.
        lines: Their total.

    Call :meth:`update` from one thread at a time.

    """

    def __init__(self, events_dir: Path, segment: Path, offset: int) -> None:
        self.events_dir = events_dir
        self.counts: Counter[TallyKey] = Counter()
        self.lines = 0
        self._segment = segment
        self._first_seq = first_seq_of(segment) or 0
        self._offset = offset

    def update(self, max_bytes: int = 64 << 20, chunk: int = 256 << 10) -> int:
        """Count what was appended since the last call, up to ``max_bytes``; return the bytes read.

        Reads ``chunk`` bytes at a time (each regular-expression pass holds
        the GIL for about as long as it takes to read them). A line still
        being written is left for the next call. Segments rolled since the
        last call are finished, then the next one is begun; a compressed
        segment is skipped (only the writer's closed ones are, by an operator).

        """
        read = 0
        while read < max_bytes:
            got = self._read_some(min(chunk, max_bytes - read))
            if got:
                read += got
                continue
            following = self._next_segment()
            if following is None:
                break
            self._segment, self._first_seq, self._offset = following, first_seq_of(following) or 0, 0
        return read

    def _read_some(self, size: int) -> int:
        try:
            with self._segment.open("rb") as f:
                f.seek(self._offset)
                data = f.read(size)
        except OSError:
            return 0
        end = data.rfind(b"\n") + 1
        if end == 0:
            if len(data) == size and size > 0:
                # A line longer than a chunk: count it whole, it is complete somewhere ahead.
                return self._read_long_line()
            return 0
        self._count(data[:end])
        self._offset += end
        return end

    def _read_long_line(self) -> int:
        with self._segment.open("rb") as f:
            f.seek(self._offset)
            line = f.readline()
        if not line.endswith(b"\n"):
            return 0
        self._count(line)
        self._offset += len(line)
        return len(line)

    def _count(self, data: bytes) -> None:
        # findall and Counter run in C: Python code runs once per distinct
        # (source, direction, frame key, type), not once per line.
        found = Counter(_LINE.findall(b"\n" + data))
        if any(frame_key == b"event" and not kind for _, _, frame_key, kind in found):
            # Frames whose type is not their first key (a REST conversation has
            # none): those lines are parsed, one by one.
            found = Counter({key: n for key, n in found.items() if key[2] != b"event" or key[3]})
            for line in data.split(b"\n"):
                match = _LINE.match(b"\n" + line)
                if match is not None and match.group(3) == b"event" and match.group(4) is None:
                    source, direction, _, _ = match.groups()
                    self._add(source, direction, _type_label(None, b"event", line + b"\n"), 1)
        for (source, direction, frame_key, kind), n in found.items():
            self._add(source, direction, _type_label(kind or None, frame_key, None), n)

    def _add(self, source: bytes, direction: bytes, label: str, n: int) -> None:
        name = source.decode("utf-8", "replace")
        self.counts[(name if name in KNOWN_SOURCES else "other", direction.decode(), label)] += n
        self.lines += n

    def _next_segment(self) -> Path | None:
        """The plain segment after the current one, once the current one is no longer written."""
        later = [
            path
            for path in list_segments(self.events_dir)
            if (first_seq_of(path) or 0) > self._first_seq and path.suffix == ".jsonl"
        ]
        if not later:
            return None
        try:
            if os.path.getsize(self._segment) > self._offset:
                return None  # the rolled segment has lines not read yet
        except OSError:
            pass  # removed (compressed): go on
        return later[0]
