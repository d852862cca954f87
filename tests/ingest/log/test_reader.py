"""Tests of ingest.log.reader: reading the log in order from any position, tolerating a live tail."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import pytest

from ingest.errors import LogError
from ingest.log.envelope import Origin, encode_line
from ingest.log.frames import inspect_frame
from ingest.log.reader import ReadStats, iter_log, last_seq_of, open_segment
from ingest.log.segments import segment_name


ORIGIN = Origin("agent_ws", "in", "agent_x", "conn-1", "conv_1")
STAMP = "2026-11-25T12:00:00.000000Z"
# Three segments: seqs 1-3, 4-6 and 7-8.
LAYOUT = {1: [1, 2, 3], 4: [4, 5, 6], 7: [7, 8]}


def _line(seq: int) -> bytes:
    return encode_line(seq, STAMP, ORIGIN, inspect_frame(f'{{"type":"user_transcript","n":{seq}}}'))


def _make_log(folder: Path, layout: dict[int, list[int]] = LAYOUT) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for first, seqs in layout.items():
        path = folder / segment_name(first)
        path.write_bytes(b"".join(_line(s) for s in seqs))
        paths.append(path)
    return paths


def _read(folder: Path, after_seq: int = 0) -> tuple[list[int], ReadStats]:
    stats = ReadStats()
    return [line.seq for line in iter_log(folder, after_seq, stats)], stats


def test_read_whole_log_in_order(tmp_path: Path) -> None:
    """From the start, every line of every segment comes in seq order."""
    _make_log(tmp_path)
    seqs, stats = _read(tmp_path)
    assert seqs == [1, 2, 3, 4, 5, 6, 7, 8]
    assert stats.corrupt == [] and not stats.partial_tail


@pytest.mark.parametrize(
    ("after_seq", "expected"),
    [
        (1, [2, 3, 4, 5, 6, 7, 8]),  # inside the first segment
        (5, [6, 7, 8]),  # in the middle of a segment
        (3, [4, 5, 6, 7, 8]),  # at a segment boundary
        (6, [7, 8]),  # at the last boundary
        (7, [8]),
        (8, []),  # at the end
        (100, []),  # past the end
    ],
)
def test_read_after_seq(tmp_path: Path, after_seq: int, expected: list[int]) -> None:
    """Reading after a seq yields exactly the later lines, wherever that seq falls."""
    _make_log(tmp_path)
    assert _read(tmp_path, after_seq)[0] == expected


def test_read_empty_or_missing_folder(tmp_path: Path) -> None:
    """A missing folder or an empty segment yields nothing."""
    assert _read(tmp_path / "missing")[0] == []
    (tmp_path / segment_name(1)).write_bytes(b"")
    assert _read(tmp_path) == ([], ReadStats())


def test_partial_tail_not_yielded_and_flagged(tmp_path: Path) -> None:
    """A last line without newline (a write in progress) is not yielded and is flagged, not corrupt."""
    paths = _make_log(tmp_path)
    with paths[-1].open("ab") as f:
        f.write(_line(9)[:-20])
    seqs, stats = _read(tmp_path)
    assert seqs == [1, 2, 3, 4, 5, 6, 7, 8]
    assert stats.partial_tail
    assert stats.corrupt == []
    # Once the write completes, the line is read.
    with paths[-1].open("ab") as f:
        f.write(_line(9)[-20:])
    assert _read(tmp_path, 8)[0] == [9]


def test_partial_line_in_closed_segment_is_corrupt(tmp_path: Path) -> None:
    """A line without newline at the end of a closed segment is flagged and recorded as corrupt."""
    paths = _make_log(tmp_path)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[:-1])
    seqs, stats = _read(tmp_path)
    assert seqs == [1, 2, 4, 5, 6, 7, 8]
    assert stats.partial_tail
    assert stats.corrupt == [(paths[0].name, len(_line(1)) + len(_line(2)))]


def test_corrupt_complete_line_skipped_and_recorded(tmp_path: Path) -> None:
    """A complete line that does not decode is skipped and recorded with its segment and offset."""
    paths = _make_log(tmp_path)
    lines = [_line(4), _line(5), _line(6)]
    lines[1] = lines[1].replace(b"user_transcript", b"user_transcripT")  # crc mismatch
    garbage = b"\x00\x00 not a line\n"
    paths[1].write_bytes(lines[0] + lines[1] + garbage + lines[2])
    seqs, stats = _read(tmp_path)
    assert seqs == [1, 2, 3, 4, 6, 7, 8]
    offset = len(lines[0])
    assert stats.corrupt == [(paths[1].name, offset), (paths[1].name, offset + len(lines[1]))]
    assert not stats.partial_tail


def test_gz_segment_read(tmp_path: Path) -> None:
    """Compressed closed segments are read like plain ones, from any position."""
    paths = _make_log(tmp_path)
    for path in paths[:2]:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert _read(tmp_path)[0] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert _read(tmp_path, 4)[0] == [5, 6, 7, 8]
    assert _read(tmp_path, 3)[0] == [4, 5, 6, 7, 8]


def test_lines_carry_envelope_and_frame(tmp_path: Path) -> None:
    """Yielded lines carry the envelope and the frame bytes."""
    _make_log(tmp_path)
    line = next(iter_log(tmp_path, 4))
    assert line.seq == 5
    assert line.frame == b'{"type":"user_transcript","n":5}'
    assert line.type == "user_transcript"
    assert line.conversation_id == "conv_1"


def test_last_seq_of(tmp_path: Path) -> None:
    """last_seq_of gives a segment's last good seq, ignoring a torn tail, for plain and gz files."""
    paths = _make_log(tmp_path)
    assert [last_seq_of(p) for p in paths] == [3, 6, 8]
    with paths[2].open("ab") as f:
        f.write(_line(9)[:-1])
    assert last_seq_of(paths[2]) == 8
    gz = paths[0].with_name(paths[0].name + ".gz")
    gz.write_bytes(gzip.compress(paths[0].read_bytes()))
    assert last_seq_of(gz) == 3


def test_last_seq_of_empty_segment(tmp_path: Path) -> None:
    """An empty segment's last seq is its first seq minus one."""
    path = tmp_path / segment_name(10)
    path.write_bytes(b"")
    assert last_seq_of(path) == 9


@pytest.mark.skipif(importlib.util.find_spec("zstandard") is not None, reason="zstandard is installed")
def test_zst_without_zstandard_is_a_clear_log_error(tmp_path: Path) -> None:
    """Opening a .zst segment without the zstandard package raises LogError saying what to install."""
    path = tmp_path / (segment_name(1) + ".zst")
    path.write_bytes(b"")
    with pytest.raises(LogError, match="zstandard"):
        open_segment(path)


def test_open_missing_segment_is_log_error(tmp_path: Path) -> None:
    """A segment that vanished raises LogError, not OSError."""
    with pytest.raises(LogError, match="cannot read"):
        open_segment(tmp_path / segment_name(1))
