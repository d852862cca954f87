"""The projections' log readers: the classifier against a parse-everything model; scan and scan_ahead agree."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from ingest.errors import LogError
from ingest.log.envelope import LogLine, decode_line
from ingest.log.writer import events_dir
from projections.log_scan import LineItem, ScanStats, classify_lines, scan
from projections.read_ahead import scan_ahead
from projections.rule import LIVE_RULE_TYPES, REST, TRANSCRIPTION_TYPE, WEBHOOK, LiveTurn, live_turn
from projections.sqlite import iter_rows, rebuild
from tests.projections.rule_cases import encode, message, transcript, webhook, write_segments


# Frame types some source's rule reads: a line of such a type may be handed on
# decoded whatever its source (the fold checks the source itself).
ANY_RULE_TYPE = {kind for kinds in LIVE_RULE_TYPES.values() for kind in kinds} | {TRANSCRIPTION_TYPE}


def reference(raws: Sequence[bytes], after_seq: int = 0) -> tuple[list[tuple[int, bool, bool]], list[int]]:
    """Parse every line; per valid line above ``after_seq``: (seq, whether the rule reads it, whether
    it may be handed on decoded); and the invalid lines' indexes."""
    seen: list[tuple[int, bool, bool]] = []
    invalid: list[int] = []
    for index, raw in enumerate(raws):
        try:
            envelope = orjson.loads(raw)
        except orjson.JSONDecodeError:
            invalid.append(index)
            continue
        seq = envelope.get("seq") if isinstance(envelope, dict) else None
        if type(seq) is not int or ("event" in envelope and not isinstance(envelope["event"], dict)):
            invalid.append(index)
            continue
        seq = first_seq(raw)  # where it is repeated, the writer's is the first
        source, event = envelope.get("source"), envelope.get("event")
        if source in (REST, WEBHOOK):
            if isinstance(event, dict):
                wanted = source == REST or event.get("type") == TRANSCRIPTION_TYPE
            else:
                wanted = isinstance(envelope.get("raw"), str)
        else:
            kinds = LIVE_RULE_TYPES.get(source, {}) if isinstance(source, str) else {}
            wanted = isinstance(event, dict) and event.get("type") in kinds
        if wanted and seq > after_seq:  # lines at or below it were counted when first read
            try:
                if decode_line(raw).seq != seq:
                    raise ValueError
            except ValueError:
                invalid.append(index)
                continue
        if seq > after_seq:
            seen.append(
                (seq, wanted, wanted or (isinstance(event, dict) and event.get("type") in ANY_RULE_TYPE))
            )
    return seen, invalid


def first_seq(raw: bytes) -> Any:
    """The value of the first "seq" key of the line's outermost object."""
    found: list[Any] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        found.append(next((value for key, value in items if key == "seq"), None))
        return dict(items)

    json.loads(raw, object_pairs_hook=pairs)
    return found[-1]  # the outermost object is built last


def expand(items: Sequence[LineItem]) -> list[tuple[int, bool]]:
    """Items as (seq, read by the rule) per line."""
    out: list[tuple[int, bool]] = []
    for item in items:
        if isinstance(item, range):
            assert len(item) > 0
            out.extend((seq, False) for seq in item)
        else:
            out.append((item.seq, True))
    return out


def _nested(seq: int, kind: str) -> bytes:
    """A frame not typed first, hiding a typed-first object under an "event" key."""
    frame = orjson.dumps({"x": 1, "event": {"type": "ping"}, "type": kind, "text": "hi"}).decode()
    return encode(seq, frame, direction="out")


def _escaped(seq: int, kind: str) -> bytes:
    """A frame whose type is spelled with a JSON escape."""
    frame = '{"type":"' + kind.replace("_", "\\u005f") + '","text":"hi","user_transcription_event":{}}'
    return encode(seq, frame, direction="out" if kind == "user_message" else "in")


def _escaped_late(seq: int, kind: str) -> bytes:
    """A frame whose type is spelled with a JSON escape in its last character."""
    frame = (
        '{"type":"' + kind[:-1] + f"\\u{ord(kind[-1]):04x}" + '","text":"hi","user_transcription_event":{}}'
    )
    return encode(seq, frame, direction="out" if kind == "user_message" else "in")


def _repeated_seq(seq: int, kind: str) -> bytes:
    raw = encode(seq, message("hi"), direction="out")
    return raw.replace(b',"received_at"', b',"seq":%d,"received_at"' % (seq + 7), 1)


def _bad_crc(seq: int, kind: str) -> bytes:
    return encode(seq, message("hi"), direction="out").replace(b'"text":"hi"', b'"text":"ho"')


# Each makes one line for a seq; the classifier must agree with `reference` on all of them.
LINE_MAKERS = [
    lambda seq, kind: encode(seq, '{"type":"ping","ping_event":{"event_id":1}}'),
    lambda seq, kind: encode(seq, '{"type":"agent_response","agent_response_event":{"agent_response":"ok"}}'),
    lambda seq, kind: encode(seq, transcript("yes")),
    lambda seq, kind: encode(seq, message("typed"), direction="out"),
    lambda seq, kind: encode(seq, message("typed"), direction="in"),  # read: the rule checks direction itself
    lambda seq, kind: encode(
        seq, '{"user_transcription_event":{"user_transcript":"late"},"type":"user_transcript"}'
    ),
    lambda seq, kind: encode(seq, b"\xff not json"),  # kept raw
    lambda seq, kind: encode(seq, '{"type":"ping"}', source=REST),
    lambda seq, kind: encode(seq, '{"conversation_id":"c","transcript":[]}', source=REST),
    lambda seq, kind: encode(seq, webhook({"conversation_id": "c"}), source=WEBHOOK),
    lambda seq, kind: encode(seq, webhook({"conversation_id": "c"}, pretty=True), source=WEBHOOK),
    lambda seq, kind: encode(seq, '{"type":"post_call_audio","data":{}}', source=WEBHOOK),
    lambda seq, kind: encode(seq, transcript("seen"), source="monitor"),
    lambda seq, kind: encode(seq, '{"type":"connection_closed","close_code":1000}', source="capture"),
    _nested,
    _escaped,
    _escaped_late,
    lambda seq, kind: encode(seq, '{"type":"user_transcript_extra","user_transcription_event":{}}'),
    lambda seq, kind: encode(seq, '{"type":"conversation_initiation_metadata"}', direction="out"),
    lambda seq, kind: encode(seq, '{"type":"user_message"}', source="capture", direction="out"),
    _repeated_seq,
    _bad_crc,
    lambda seq, kind: b"garbage",
    lambda seq, kind: b'{"seq":"7","event":{"type":"ping"}}',
    lambda seq, kind: encode(seq, transcript("torn"))[:40],
]

STEPS = st.lists(
    st.tuples(
        st.integers(0, len(LINE_MAKERS) - 1),
        st.sampled_from([1, 1, 1, 0, 2, -3]),  # seq step: next, repeated, gap, back
        st.sampled_from(["user_transcript", "user_message", "ping"]),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(steps=STEPS, after_seq=st.integers(0, 12), rest_hint=st.booleans())
def test_classifier_agrees_with_parsing_every_line(
    steps: list[tuple[int, int, str]], after_seq: int, rest_hint: bool
) -> None:
    """Lines the rule reads come decoded, the others as ranges of their seqs, the invalid by index."""
    raws: list[bytes] = []
    seq = 1
    for maker, step, kind in steps:
        seq = max(1, seq + step)
        raws.append(LINE_MAKERS[maker](seq, kind))
    items, invalid = classify_lines(
        raws, after_seq, rest_possible=rest_hint or any(b'"rest"' in r for r in raws)
    )
    seen, expected_invalid = reference(raws, after_seq)
    got = expand(items)
    assert [seq for seq, _ in got] == [seq for seq, _, _ in seen]
    for (_, decoded), (_, wanted, may) in zip(got, seen, strict=True):
        assert decoded if wanted else decoded <= may  # never a turn missed; extras only of a rule type
    assert invalid == expected_invalid


def _log(tmp_path: Path) -> Path:
    """A log of three segments (gaps, invalid lines, a torn closed segment end, a torn active tail)."""
    first = [encode(s, '{"type":"ping","ping_event":{}}') for s in range(1, 4000)]
    first[100] = encode(101, transcript("hello"))
    first[200] = b"garbage"
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


def _items(lines: Sequence[LineItem]) -> list[Any]:
    """Each line as (seq, frame): a LiveTurn stands for its line."""
    return [item if isinstance(item, range) else (item.seq, item.frame) for item in lines]


@pytest.mark.parametrize("after_seq", [0, 150, 4005, 7099])
@pytest.mark.parametrize(("thread", "decode_turns"), [(None, None), (True, True), (False, False)])
def test_scan_ahead_yields_what_scan_yields(
    tmp_path: Path, after_seq: int, thread: bool | None, decode_turns: bool | None
) -> None:
    """Whoever decodes the turns, and however the messages are taken off the pipe."""
    folder = _log(tmp_path)
    here, there = ScanStats(), ScanStats()
    expected = _items(list(scan(folder, after_seq, here)))
    got = list(scan_ahead(folder, after_seq, there, thread=thread, decode_turns=decode_turns))
    assert _items(got) == expected
    turns = [item for item in got if isinstance(item, LiveTurn)]
    if decode_turns is not None and after_seq < 7000:
        assert bool(turns) == decode_turns
    decoded = {line.seq: line for line in scan(folder, after_seq) if isinstance(line, LogLine)}
    assert all(turn == live_turn(decoded[turn.seq]) for turn in turns)
    assert sorted(there.invalid) == sorted(here.invalid) and there.partial_tail == here.partial_tail
    assert here.partial_tail
    if after_seq == 0:
        assert len(here.invalid) == 2  # the garbage line, the closed segment's torn end
        assert [i[0] for i in expected if isinstance(i, tuple)][:2] == [101, 3001]


def test_lines_cut_by_the_read_size_are_read_whole(tmp_path: Path) -> None:
    """Segments are read a MiB at a time: a line across that boundary is read once, whole."""
    raws = [
        encode(s, transcript("x" * (s % 500)) if s % 7 == 0 else '{"type":"ping","ping_event":{}}')
        for s in range(1, 30_001)
    ]
    write_segments(tmp_path, [b"".join(raws)], [1])
    assert sum(map(len, raws)) > 3 * 2**20
    expected, invalid = classify_lines(raws)
    assert invalid == [] and _per_line(list(scan(events_dir(tmp_path)))) == _per_line(expected)
    assert _per_line(list(scan_ahead(events_dir(tmp_path)))) == _per_line(expected)


def _per_line(items: Sequence[LineItem]) -> list[tuple[int, bytes | None]]:
    """Each line as (seq, frame if decoded): a run may be cut in two where a read ends."""
    out: list[tuple[int, bytes | None]] = []
    for item in items:
        if isinstance(item, range):
            out.extend((seq, None) for seq in item)
        else:
            out.append((item.seq, item.frame))
    return out


def test_scan_ahead_reports_an_unreadable_segment(tmp_path: Path) -> None:
    folder = _log(tmp_path)
    (folder / "00000000000000009000.jsonl.zst").write_bytes(b"not zstd")
    with pytest.raises(LogError, match="zst"):
        list(scan_ahead(folder))


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
@pytest.mark.parametrize("thread", [None, True])
def test_a_killed_reader_is_an_error_not_a_short_log(tmp_path: Path, thread: bool | None) -> None:
    """If the child dies mid-way, the caller gets an error, never a log that seems to end early."""
    folder = _log(tmp_path)
    lines = scan_ahead(folder, thread=thread)
    next(lines)
    children = _children()
    assert children, "no reader process"
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(LogError, match="stopped"):
        for _ in lines:
            pass


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("thread", [None, True])
def test_closing_early_stops_the_reader(tmp_path: Path, thread: bool | None) -> None:
    folder = _log(tmp_path)
    lines = scan_ahead(folder, thread=thread)
    next(lines)
    assert _children()
    lines.close()
    deadline = time.monotonic() + 10
    while _children() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _children()


def _children() -> list[int]:
    """Live (not zombie) child processes of this one, from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == str(os.getpid()) and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def test_decoded_lines_are_those_decode_line_gives(tmp_path: Path) -> None:
    folder = _log(tmp_path)
    for item in scan_ahead(folder, decode_turns=False):
        if isinstance(item, LogLine):
            raw = encode(
                item.seq, item.frame.decode(), direction=item.direction, received_at=item.received_at
            )
            assert decode_line(raw) == item


def test_rebuild_reading_ahead_gives_the_same_table(tmp_path: Path) -> None:
    _log(tmp_path)
    reports = {}
    for read_ahead in (False, True):
        db = tmp_path / f"ahead-{read_ahead}.db"
        reports[read_ahead] = rebuild(tmp_path, db, read_ahead=read_ahead)
    here, there = reports[False], reports[True]
    assert list(iter_rows(tmp_path / "ahead-True.db")) == list(iter_rows(tmp_path / "ahead-False.db"))
    assert (there.lines_read, there.rows_written, there.skipped, there.gaps, there.partial_tail) == (
        here.lines_read,
        here.rows_written,
        here.skipped,
        here.gaps,
        here.partial_tail,
    )
    assert here.rows_written > 1000 and here.gaps
