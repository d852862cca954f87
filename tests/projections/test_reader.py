"""The projections' log reader: every path against a parse-everything model; DuckDB's reading checked."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import projections.reader as reader
from ingest.errors import LogError
from ingest.log.envelope import LogLine, decode_line
from ingest.log.segments import segment_name
from ingest.log.writer import events_dir
from projections.reader import (
    LineItem,
    LogTail,
    Position,
    ScanStats,
    is_candidate,
    line_items,
    log_last_seq,
    scan,
)
from projections.rule import BODY_SOURCES, LIVE_RULE_TYPES, REST, TRANSCRIPTION_TYPE
from tests.projections.rule_cases import encode, message, transcript, webhook, write_segments


@pytest.fixture
def duckdb_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """Have DuckDB read every uncompressed segment, however small."""
    monkeypatch.setattr(reader, "DUCKDB_MIN_BYTES", 0)


# --- the model: every line parsed -----------------------------------------------------------------

_WRITER_START = re.compile(rb'\{"seq":(0|[1-9][0-9]*),')


def model_reads(envelope: dict[str, Any]) -> bool:
    """Whether the rule reads a parsed line, written out plainly."""
    source, event = envelope.get("source"), envelope.get("event")
    if source in BODY_SOURCES:
        if isinstance(event, dict):
            return source == REST or event.get("type") == TRANSCRIPTION_TYPE
        return isinstance(envelope.get("raw"), str)
    if not isinstance(source, str) or source not in LIVE_RULE_TYPES or not isinstance(event, dict):
        return False
    kind = event.get("type")
    return isinstance(kind, str) and LIVE_RULE_TYPES[source].get(kind) == envelope.get("direction")


def model(raws: Sequence[bytes], after_seq: int = 0) -> tuple[list[tuple[int, bool]], list[int]]:
    """Per line handed on: (seq, whether decoded); and the indexes of the invalid lines.

    Asserts on the way that every line the rule reads is a candidate.
    """
    seen: list[tuple[int, bool]] = []
    invalid: list[int] = []
    for index, raw in enumerate(raws):
        start = _WRITER_START.match(raw)
        first = int(start[1]) if start else None
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict) or type(parsed.get("seq")) is not int:
            parsed = None
        reads = parsed is not None and model_reads(parsed)
        if first is not None and not is_candidate(raw):
            assert not reads, f"a line the rule reads is not a candidate: {raw!r}"
            if first > after_seq:
                seen.append((first, False))
            continue
        if first is not None and first <= after_seq:
            continue  # read before: not checked again
        if parsed is None:
            invalid.append(index)
            continue
        seq = first if first is not None else parsed["seq"]
        if reads:
            try:
                if decode_line(raw).seq != seq:
                    raise ValueError("repeats seq")
            except ValueError:
                invalid.append(index)
                continue
        if seq > after_seq:
            seen.append((seq, reads))
    return seen, invalid


def per_line(items: Sequence[LineItem]) -> list[tuple[int, bool]]:
    """Items as (seq, decoded) per line."""
    out: list[tuple[int, bool]] = []
    for item in items:
        if isinstance(item, range):
            assert len(item) > 0
            out.extend((seq, False) for seq in item)
        else:
            out.append((item.seq, True))
    return out


def agree(items: Sequence[LineItem], expected: list[tuple[int, bool]]) -> None:
    """Same lines, same seqs; every line the model decodes is decoded (others may be too)."""
    got = per_line(items)
    assert [seq for seq, _ in got] == [seq for seq, _ in expected]
    for (_, decoded), (_, wanted) in zip(got, expected, strict=True):
        assert decoded or not wanted


def offsets(raws: Sequence[bytes]) -> list[int]:
    out, at = [], 0
    for raw in raws:
        out.append(at)
        at += len(raw)
    return out


# --- the hard cases -----------------------------------------------------------------------------


def _nested(seq: int, kind: str) -> bytes:
    """A frame not typed first, hiding a typed-first object under an "event" key."""
    frame = orjson.dumps({"x": 1, "event": {"type": "ping"}, "type": kind, "text": "hi"}).decode()
    return encode(seq, frame, direction="out")


def _escaped(seq: int, kind: str) -> bytes:
    """A frame whose type is spelled with a JSON escape."""
    frame = '{"type":"' + kind.replace("_", "\\u005f") + '","text":"hi","user_transcription_event":{}}'
    return encode(seq, frame, direction="out" if kind == "user_message" else "in")


def _escaped_key(seq: int, kind: str) -> bytes:
    """A frame whose "type" key is spelled with an escape, after another type."""
    frame = '{"x":{"type":"ping"},"t\\u0079pe":"' + kind + '","text":"hi","user_transcription_event":{}}'
    return encode(seq, frame, direction="out" if kind == "user_message" else "in")


def _spaced(seq: int, kind: str) -> bytes:
    """A frame as Python's json writes it: a space after each colon and comma."""
    frame = json.dumps({"type": kind, "text": "hi", "user_transcription_event": {"user_transcript": "hi"}})
    return encode(seq, frame, direction="out" if kind == "user_message" else "in")


def _repeated_seq(seq: int, kind: str) -> bytes:
    raw = encode(seq, message("hi"), direction="out")
    return raw.replace(b',"received_at"', b',"seq":%d,"received_at"' % (seq + 7), 1)


def _repeated_seq_unread(seq: int, kind: str) -> bytes:
    raw = encode(seq, '{"type":"ping"}')
    return raw.replace(b',"received_at"', b',"seq":%d,"received_at"' % (seq + 7), 1)


def _bad_crc(seq: int, kind: str) -> bytes:
    return encode(seq, message("hi"), direction="out").replace(b'"text":"hi"', b'"text":"ho"')


def _bad_crc_unread(seq: int, kind: str) -> bytes:
    return encode(seq, '{"type":"ping","x":"hi"}').replace(b'"x":"hi"', b'"x":"ho"')


def _seq_later(seq: int, kind: str) -> bytes:
    """Seq not the first key: the reader cannot know it from the first bytes."""
    envelope = orjson.loads(encode(seq, message("hi"), direction="out"))
    del envelope["seq"]
    return orjson.dumps({**envelope, "seq": seq}) + b"\n"


# Each makes one line for a seq; every reader must agree with `model` on all of them.
LINE_MAKERS = [
    lambda seq, kind: encode(seq, '{"type":"ping","ping_event":{"event_id":1}}'),
    lambda seq, kind: encode(seq, '{"type":"agent_response","agent_response_event":{"agent_response":"ok"}}'),
    lambda seq, kind: encode(seq, transcript("yes")),
    lambda seq, kind: encode(seq, message("typed"), direction="out"),
    lambda seq, kind: encode(seq, message("typed"), direction="in"),
    lambda seq, kind: encode(
        seq, '{"user_transcription_event":{"user_transcript":"late"},"type":"user_transcript"}'
    ),
    lambda seq, kind: encode(seq, b"\xff not json"),  # kept raw
    lambda seq, kind: encode(seq, '{"type":"ping"}', source=REST),
    lambda seq, kind: encode(seq, '{"conversation_id":"c","transcript":[]}', source=REST),
    lambda seq, kind: encode(seq, webhook({"conversation_id": "c"}), source="webhook"),
    lambda seq, kind: encode(seq, webhook({"conversation_id": "c"}, pretty=True), source="webhook"),
    lambda seq, kind: encode(seq, '{"type":"post_call_audio","data":{}}', source="webhook"),
    lambda seq, kind: encode(seq, transcript("seen"), source="monitor"),
    lambda seq, kind: encode(seq, '{"type":"connection_closed","close_code":1000}', source="capture"),
    lambda seq, kind: encode(seq, '{"type":"agent_response","text":"Ol\\u00e1 \\u00e7a"}'),
    lambda seq, kind: encode(seq, '{"type":["user_transcript"],"text":"x"}'),
    lambda seq, kind: encode(seq, '{"type":{"user_message":1}}', direction="out"),
    _nested,
    _escaped,
    _escaped_key,
    _spaced,
    lambda seq, kind: encode(seq, '{"type":"user_transcript_extra","user_transcription_event":{}}'),
    lambda seq, kind: encode(seq, '{"type":"conversation_initiation_metadata"}', direction="out"),
    lambda seq, kind: encode(seq, '{"type":"user_message"}', source="capture", direction="out"),
    _repeated_seq,
    _repeated_seq_unread,
    _bad_crc,
    _bad_crc_unread,
    _seq_later,
    lambda seq, kind: b"garbage\n",
    lambda seq, kind: b"\n",
    lambda seq, kind: b"   \n",
    lambda seq, kind: b'{"seq":"7","event":{"type":"ping"}}\n',
    lambda seq, kind: b'{"seq":%d.0,"event":{"type":"user_message"}}\n' % seq,
    lambda seq, kind: b'{"seq":0%d,"event":{"type":"ping"}}\n' % seq,
    lambda seq, kind: b'{"seq":%d,"garbage' % seq + b"\n",  # starts right, gives no row: not checked
    lambda seq, kind: b'{"seq":%d,"garbage "type":"user_message"\n' % seq,
    lambda seq, kind: encode(seq, transcript("torn"))[:40] + b"\n",
    lambda seq, kind: b'{"seq":%d,"x":"\xc3\x28"}\n' % seq,  # not UTF-8
    lambda seq, kind: b'{"seq":%d,\r"source":"rest","event":{}}\n' % seq,  # a carriage return inside
    lambda seq, kind: encode(seq, '{"type":"ping"}')[:-1] + b"\r\n",
    lambda seq, kind: b'{"seq":12345678901234567890,"event":{"type":"ping"}}\n',
]

STEPS = st.lists(
    st.tuples(
        st.integers(0, len(LINE_MAKERS) - 1),
        st.sampled_from([1, 1, 1, 1, 0, 2, -3]),  # seq step: next, repeated, gap, back
        st.sampled_from(["user_transcript", "user_message", "ping"]),
    ),
    max_size=40,
)


def make_lines(steps: list[tuple[int, int, str]]) -> list[bytes]:
    raws: list[bytes] = []
    seq = 1
    for maker, step, kind in steps:
        seq = max(1, seq + step)
        raws.append(LINE_MAKERS[maker](seq, kind))
    return raws


@settings(max_examples=400, deadline=None)
@given(steps=STEPS, after_seq=st.integers(0, 12))
def test_lines_are_sorted_as_parsing_every_line_says(
    steps: list[tuple[int, int, str]], after_seq: int
) -> None:
    """Lines the rule reads come decoded, the others as ranges of their seqs, the invalid by position."""
    raws = make_lines(steps)
    items, invalid = line_items(raws, after_seq, segment=7, offset=100)
    expected, bad = model(raws, after_seq)
    agree(items, expected)
    at = offsets(raws)
    assert invalid == [(7, 100 + at[i]) for i in bad]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS, after_seq=st.integers(0, 12), tail=st.sampled_from([b"", b'{"seq":99,"tor']))
def test_duckdb_reads_as_python_does(
    tmp_path: Path, duckdb_always: None, steps: list[tuple[int, int, str]], after_seq: int, tail: bytes
) -> None:
    """A segment read by DuckDB (or, where what it read does not check out, line by line) agrees with the model."""
    raws = make_lines(steps)
    case = tmp_path / str(abs(hash((tuple(raws), after_seq, tail))))
    write_segments(case, [b"".join(raws) + tail], [1])
    stats = ScanStats()
    items = list(scan(events_dir(case), after_seq, stats))
    expected, bad = model(raws, after_seq)
    agree(items, expected)
    at = offsets(raws)
    assert sorted(stats.invalid) == [(1, at[i]) for i in bad]
    assert stats.partial_tail == bool(tail)


def segment_of(tmp_path: Path, data: bytes, *, active: bool = False) -> reader._Segment:
    path = tmp_path / segment_name(1)
    path.write_bytes(data)
    return reader._survey(path, active)


def fast(segment: reader._Segment, after_seq: int = 0) -> tuple[list[Any], list[Position]] | None:
    """The items and invalid positions of DuckDB's reading of ``segment``, or ``None`` if it did not check out."""
    import duckdb

    with duckdb.connect() as connection:
        rows = reader._query(connection, segment, after_seq)
    if rows is None:
        return None
    stats = ScanStats()
    return list(reader._fast_items(segment, rows, after_seq, stats)), stats.invalid


CLEAN = b"".join(encode(s, transcript(f"t{s}") if s % 4 == 0 else '{"type":"ping"}') for s in range(1, 400))


def test_duckdb_hands_on_only_candidates_and_breaks_in_seq(tmp_path: Path) -> None:
    """On a clean segment DuckDB's reading is used: 100 turns, runs of pings between, one invalid line."""
    raws = io.BytesIO(CLEAN).readlines()
    raws.insert(200, b"\n")
    found = fast(segment_of(tmp_path, b"".join(raws)))
    assert found is not None
    items, invalid = found
    assert invalid == [(1, sum(map(len, raws[:200])))]
    assert sum(1 for item in items if not isinstance(item, range)) == 99
    assert [item for item in items if isinstance(item, range)][:2] == [range(1, 4), range(5, 8)]


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data.replace(b"}\n", b"}\r", 1),  # DuckDB ends a line there
        lambda data: data.replace(b'"t5', b'"t\xc3\x28', 1),  # not UTF-8: DuckDB leaves the line out
        lambda data: data.replace(b'"t8"', b'"' + b"x" * (5 << 20) + b'"', 1),  # longer than DuckDB's buffer
        lambda data: data.replace(b'"t12"', b'"\x01"', 1),  # DuckDB's column delimiter
    ],
)
def test_what_duckdb_cannot_read_as_python_does_is_read_line_by_line(tmp_path: Path, damage: Any) -> None:
    segment = segment_of(tmp_path, damage(CLEAN))
    assert fast(segment) is None
    raws = io.BytesIO(segment.path.read_bytes()).readlines()
    stats = ScanStats()
    items = list(scan(segment.path.parent, 0, stats))
    assert per_line(items) == per_line(line_items(raws)[0]) and len(items) > 50


def test_the_active_segment_is_read_to_its_last_complete_line(tmp_path: Path) -> None:
    """What is appended after the survey, and a torn tail, are left for the next read."""
    segment = segment_of(tmp_path, CLEAN + b'{"seq":400,"tor', active=True)
    with segment.path.open("ab") as f:
        f.write(b'n"}\n' + encode(401, transcript("later")))
    found = fast(segment)
    assert found is not None
    assert per_line(found[0])[-1] == (399, False)
    assert found[1] == []
    closed = segment_of(tmp_path, CLEAN + b'{"seq":400,"tor')
    assert fast(closed) == (found[0], [(1, len(CLEAN))])  # a closed segment's torn end is invalid


@pytest.mark.parametrize("tail", [b"", b'{"seq":401,"torn'])
def test_the_survey_finds_a_last_line_longer_than_its_window(tmp_path: Path, tail: bytes) -> None:
    long_line = encode(400, transcript("x" * 50_000))
    segment = segment_of(tmp_path, CLEAN + long_line + tail)
    assert segment.last_line == long_line[:-1] and segment.complete == len(CLEAN) + len(long_line)
    found = fast(segment)
    assert found is not None and per_line(found[0])[-1] == (400, True)


def test_a_segment_shorter_than_the_survey_found_is_read_line_by_line(tmp_path: Path) -> None:
    segment = segment_of(tmp_path, CLEAN)
    segment.path.write_bytes(CLEAN[: len(CLEAN) // 2])
    assert fast(segment) is None


def _log(tmp_path: Path) -> Path:
    """A log of three segments (gaps, invalid lines, a torn closed segment end, a torn active tail)."""
    first = [encode(s, '{"type":"ping","ping_event":{}}') for s in range(1, 4000)]
    first[100] = encode(101, transcript("hello"))
    first[200] = b"garbage\n"
    first[3000] = encode(3001, message("typed"), direction="out")
    second = [
        encode(s, transcript(f"t{s}") if s % 3 == 0 else '{"type":"vad_score"}') for s in range(4000, 7000)
    ]
    second[10] = encode(4012, '{"type":"vad_score"}')  # a gap
    third = [encode(s, message(f"m{s}"), direction="out") for s in range(7000, 7100)]
    write_segments(
        tmp_path,
        [b"".join(first) + b'{"seq":4000,"torn', b"".join(second), b"".join(third) + b'{"seq":7100,'],
        [1, 4000, 7000],
    )
    return events_dir(tmp_path)


def _frames(items: Sequence[LineItem]) -> list[Any]:
    return [(item.seq, item.frame) if isinstance(item, LogLine) else list(item) for item in items]


@pytest.mark.parametrize("after_seq", [0, 150, 4005, 7099])
def test_duckdb_and_python_scans_agree_across_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after_seq: int
) -> None:
    folder = _log(tmp_path)
    results = []
    for smallest in (0, 1 << 40):  # every segment read by DuckDB, then none
        monkeypatch.setattr(reader, "DUCKDB_MIN_BYTES", smallest)
        stats = ScanStats()
        results.append(
            (per_line(list(scan(folder, after_seq, stats))), sorted(stats.invalid), stats.partial_tail)
        )
    assert results[0] == results[1]
    lines, invalid, partial = results[0]
    assert partial  # the active segment's torn tail
    assert lines[-1:] == ([(7099, True)] if after_seq < 7099 else [])
    if after_seq == 0:
        assert len(invalid) == 2  # the garbage line, the closed segment's torn end
        assert [seq for seq, decoded in lines if decoded][:2] == [101, 3001]


def test_decoded_lines_are_those_decode_line_gives(tmp_path: Path, duckdb_always: None) -> None:
    folder = _log(tmp_path)
    decoded = [item for item in scan(folder) if isinstance(item, LogLine)]
    assert len(decoded) > 1000
    for item in decoded:
        raw = encode(item.seq, item.frame.decode(), direction=item.direction, received_at=item.received_at)
        assert decode_line(raw) == item


def test_an_unreadable_segment_is_a_log_error(tmp_path: Path, duckdb_always: None) -> None:
    folder = _log(tmp_path)
    (folder / (segment_name(9000) + ".zst")).write_bytes(b"not zstd")
    with pytest.raises(LogError, match="zst"):
        list(scan(folder))


def test_closing_the_scan_early_stops_reading_ahead(tmp_path: Path, duckdb_always: None) -> None:
    folder = _log(tmp_path)
    lines = scan(folder)
    assert next(lines) == range(1, 101)
    lines.close()
    with pytest.raises(StopIteration):
        next(lines)


def _tail_lines(tail: LogTail) -> Iterator[tuple[list[LineItem], list[Position]]]:
    while True:
        read = tail.read(500)
        if not read.items and not read.invalid:
            return
        yield read.items, read.invalid


def test_the_tail_reads_what_the_scan_reads(tmp_path: Path) -> None:
    folder = _log(tmp_path)
    tail = LogTail(folder, 150)
    try:
        reads = list(_tail_lines(tail))
    finally:
        tail.close()
    stats = ScanStats()
    assert per_line([item for items, _ in reads for item in items]) == per_line(
        list(scan(folder, 150, stats))
    )
    assert sorted(position for _, invalid in reads for position in invalid) == sorted(stats.invalid)
    assert len(stats.invalid) == 2


def test_log_last_seq_skips_a_torn_tail(tmp_path: Path) -> None:
    assert log_last_seq(tmp_path) is None
    _log(tmp_path)
    assert log_last_seq(tmp_path) == 7099
