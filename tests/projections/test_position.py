"""A projection never trusts a log that moved under it: its position names a line, checked before reading on."""

from __future__ import annotations

import gzip
import io
import zlib
from itertools import islice
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.reader import read_line_ending_at
from ingest.log.segments import RotationPolicy, list_segments, segment_name
from ingest.log.writer import FsyncPolicy, LogWriter, events_dir
from projections.live import start_live_projection
from projections.reader import LogTail, Marks, ScanStats, anchor_problem, line_items, scan
from projections.runner import project, rebuild
from projections.sqlite import UserTextStore, projection_status
from tests.projections.rule_cases import dump, encode, message, projected_seq, transcript, wait_until


SENT = Origin("agent_ws", "out", "agent_x", "conn-1", "conv_1")
GOT = Origin("agent_ws", "in", "agent_x", "conn-1", "conv_1")
PING = '{"type":"ping","ping_event":{"event_id":1}}'


def _append(data_dir: Path, texts: list[str], **kwargs: object) -> list[int]:
    kwargs.setdefault("fsync", FsyncPolicy.NEVER)
    with LogWriter.open(data_dir, **kwargs) as writer:  # type: ignore[arg-type]
        seqs = []
        for text in texts:
            seqs.append(writer.append(SENT, inspect_frame(message(text))))
            writer.append(GOT, inspect_frame(PING))
        return seqs


def _lose_the_end(data_dir: Path, lines: int) -> None:
    """What a power cut under ``--fsync interval`` can do: the active segment's last lines never reached the disk."""
    active = list_segments(events_dir(data_dir))[-1]
    kept = active.read_bytes().splitlines(keepends=True)[:-lines]
    active.write_bytes(b"".join(kept))


def _texts(db: Path) -> list[str]:
    return [row[5] for row in dump(db)]


def test_new_lines_after_a_lost_end_are_projected_not_skipped(tmp_path: Path) -> None:
    """The reproduction: the lost seqs are given again, and the table must not skip the new lines."""
    data_dir, db = tmp_path / "data", tmp_path / "db"
    _append(data_dir, [f"before {n}" for n in range(10)])
    project(data_dir, db)
    assert projected_seq(db) == 20
    _lose_the_end(data_dir, 6)  # turns 7, 8, 9 are gone from the log, not from the table
    status = projection_status(data_dir, db)
    assert status["lag_lines"] == 0
    assert any("ends at seq 14, before the table's position (seq 20)" in p for p in status["problems"])
    assert _append(data_dir, [f"after {n}" for n in range(5)]) == [15, 17, 19, 21, 23]
    status = projection_status(data_dir, db)
    assert any("no longer holds seq 20" in p and "capture rebuild" in p for p in status["problems"])

    report = project(data_dir, db)
    assert report.rebuilt is not None and "seq 20" in report.rebuilt
    assert _texts(db) == [f"before {n}" for n in range(7)] + [f"after {n}" for n in range(5)]
    rebuild(data_dir, tmp_path / "fresh.db")
    assert dump(db) == dump(tmp_path / "fresh.db")
    assert projection_status(data_dir, db)["problems"] == []
    again = project(data_dir, db)
    assert again.rebuilt is None and again.lines_read == 0


def test_a_log_shorter_than_the_table_is_rebuilt_too(tmp_path: Path) -> None:
    data_dir, db = tmp_path / "data", tmp_path / "db"
    _append(data_dir, [f"t{n}" for n in range(10)])
    project(data_dir, db)
    _lose_the_end(data_dir, 4)
    report = project(data_dir, db)
    assert report.rebuilt is not None and "no line ends there" in report.rebuilt
    assert _texts(db) == [f"t{n}" for n in range(8)]


def test_a_log_replaced_by_another_is_noticed(tmp_path: Path) -> None:
    """Another log copied in (seq restarting at 1): its lines are not taken for ones already applied."""
    data_dir, db = tmp_path / "data", tmp_path / "db"
    _append(data_dir, [f"old {n}" for n in range(5)])
    project(data_dir, db)
    for path in list_segments(events_dir(data_dir)):
        path.unlink()
    _append(data_dir, [f"new {n}" for n in range(8)])
    report = project(data_dir, db)
    assert report.rebuilt is not None
    assert _texts(db) == [f"new {n}" for n in range(8)]


def test_compressing_a_segment_keeps_the_position(tmp_path: Path) -> None:
    data_dir, db = tmp_path / "data", tmp_path / "db"
    _append(data_dir, [f"t{n}" for n in range(20)], rotation=RotationPolicy(max_bytes=2000))
    project(data_dir, db)
    segments = list_segments(events_dir(data_dir))
    assert len(segments) > 3
    for path in segments:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    with UserTextStore.open(db) as store:
        assert anchor_problem(events_dir(data_dir), store.last_seq, store.anchor) is None
    assert project(data_dir, db).rebuilt is None


def test_the_live_follower_checks_its_position_on_start(tmp_path: Path) -> None:
    data_dir, db = tmp_path / "data", tmp_path / "db"
    _append(data_dir, [f"before {n}" for n in range(10)])
    project(data_dir, db)
    _lose_the_end(data_dir, 6)
    with LogWriter.open(data_dir, fsync=FsyncPolicy.NEVER) as writer:
        live = start_live_projection(data_dir, db)
        seqs = [writer.append(SENT, inspect_frame(message(f"after {n}"))) for n in range(5)]
        assert seqs == list(range(15, 20))
        wait_until(lambda: projected_seq(db) == 19, 20, "the rebuilt table to catch up")
    assert live.stop() == 0
    assert _texts(db) == [f"before {n}" for n in range(7)] + [f"after {n}" for n in range(5)]


# --- the anchors the readers give ----------------------------------------------------------------


def _log_lines(n: int) -> list[bytes]:
    return [
        encode(seq, transcript(f"t{seq}", seq) if seq % 5 == 0 else PING, direction="in")
        for seq in range(1, n + 1)
    ]


def _write(folder: Path, lines: list[bytes], per_segment: int, compress: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(lines), per_segment):
        data = b"".join(lines[start : start + per_segment])
        path = folder / segment_name(start + 1)
        if compress and start + per_segment < len(lines):
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
        else:
            path.write_bytes(data)


def _check(folder: Path, lines: list[bytes], seq: int, anchor: object) -> None:
    assert anchor is not None, f"no anchor for seq {seq}"
    assert anchor_problem(folder, seq, anchor) is None  # type: ignore[arg-type]
    assert anchor.crc == zlib.crc32(lines[seq - 1])  # type: ignore[attr-defined]


def _last_seq(items: list[object], before: int) -> int:
    last = before
    for item in items:
        last = max(last, item.stop - 1 if isinstance(item, range) else item.seq)  # type: ignore[attr-defined]
    return last


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 40), per_segment=st.integers(5, 80), compress=st.booleans())
def test_every_batch_scan_hands_on_ends_with_an_anchored_line(
    tmp_path_factory: pytest.TempPathFactory, read_path: str, batch: int, per_segment: int, compress: bool
) -> None:
    folder = tmp_path_factory.mktemp("log")
    lines = _log_lines(150)
    _write(folder, lines, per_segment, compress)
    stats = ScanStats()
    items = scan(folder, 0, stats)
    last = 0
    while taken := list(islice(items, batch)):
        last = _last_seq(taken, last)
        _check(folder, lines, last, stats.marks.anchor(last))
    assert last == 150


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_every_read_of_the_tail_ends_with_an_anchored_line(tmp_path: Path, chunk: int) -> None:
    folder = tmp_path / "events"
    lines = _log_lines(120)
    _write(folder, lines, 50)
    tail = LogTail(folder, 3)
    last = 3
    for _ in range(1000):
        read = tail.read(chunk)
        if read.items:
            last = _last_seq(read.items, last)
            _check(folder, lines, last, tail.marks.anchor(last))
        if last == 120:
            break
    tail.close()
    assert last == 120


def test_line_items_note_where_each_item_ends(tmp_path: Path) -> None:
    raws = _log_lines(12)
    marks = Marks()
    path = tmp_path / segment_name(1)
    path.write_bytes(b"".join(raws))
    items, _ = line_items(io.BytesIO(path.read_bytes()).readlines(), marks=marks, path=path)
    assert marks.anchor(12) is not None and marks.anchor(12).end == path.stat().st_size  # type: ignore[union-attr]
    assert read_line_ending_at(path, path.stat().st_size) == raws[-1]
    assert marks.anchor(3) is None  # only the last items are kept


# --- damaged lines are reported where they are -----------------------------------------------------


def test_a_damaged_line_is_reported_with_its_seq_segment_and_offset(tmp_path: Path, read_path: str) -> None:
    data_dir, db = tmp_path / "data", tmp_path / "db"
    _append(data_dir, [f"t{n}" for n in range(30)])  # turns at odd seqs, pings at even ones
    segment = list_segments(events_dir(data_dir))[0]
    lines = segment.read_bytes().splitlines(keepends=True)
    lines[18] = lines[18].replace(b'"t9"', b'"t8"')  # seq 19: its crc32 fails
    segment.write_bytes(b"".join(lines))
    offset = sum(map(len, lines[:18]))
    report = project(data_dir, db)
    assert [str(line) for line in report.damaged] == [f"seq 19 ({segment.name}, byte {offset:,})"]
    assert [str(gap) for gap in report.gaps] == ["seq 19..19 missing"]
    assert "t9" not in _texts(db) and len(_texts(db)) == 29
    problems = projection_status(data_dir, db)["problems"]
    assert problems == [
        "seq 19..19 missing",
        f"a damaged line, skipped: seq 19 ({segment.name}, byte {offset:,})",
    ]
    assert [str(line) for line in rebuild(data_dir, db).damaged] == [str(report.damaged[0])]
