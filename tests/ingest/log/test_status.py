"""Tests of ingest.log.status: what the log holds, and the gaps between its segments."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from ingest.errors import LogError
from ingest.log.envelope import Origin, encode_line
from ingest.log.frames import inspect_frame
from ingest.log.segments import segment_name
from ingest.log.status import log_status
from ingest.log.writer import events_dir


ORIGIN = Origin("agent_ws", "in", "agent_x", "conn-1", "conv_1")


def _lines(first: int, last: int) -> bytes:
    return b"".join(
        encode_line(seq, f"2026-11-25T12:00:{seq % 60:02d}.000000Z", ORIGIN, inspect_frame('{"type":"ping"}'))
        for seq in range(first, last + 1)
    )


def _log(data_dir: Path, spans: dict[int, int], compressed: tuple[int, ...] = ()) -> Path:
    folder = events_dir(data_dir)
    folder.mkdir(parents=True)
    for first, last in spans.items():
        path = folder / segment_name(first)
        if first in compressed:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(_lines(first, last)))
        else:
            path.write_bytes(_lines(first, last))
    return folder


def test_a_whole_log_has_no_problem(tmp_path: Path) -> None:
    _log(tmp_path, {1: 10, 11: 20, 21: 25}, compressed=(1,))
    status = log_status(tmp_path)
    assert (status.segments, status.lines, status.first_seq, status.last_seq) == (3, 25, 1, 25)
    assert status.last_received_at == "2026-11-25T12:00:25.000000Z"
    assert status.gaps == [] and status.problems == []


def test_a_missing_segment_is_a_gap(tmp_path: Path) -> None:
    folder = _log(tmp_path, {1: 10, 11: 20, 21: 25})
    (folder / segment_name(11)).unlink()
    status = log_status(tmp_path)
    assert status.gaps == [(10, 21)]
    assert status.problems == [
        f"seq 11..20 missing: {segment_name(1)} ends at seq 10 and {segment_name(21)} starts at 21"
        " (a segment cut short or gone)"
    ]
    assert status.lines == 15


@pytest.mark.parametrize("compressed", [False, True])
def test_a_closed_segment_cut_short_is_a_gap(tmp_path: Path, compressed: bool) -> None:
    folder = _log(tmp_path, {1: 10, 11: 20, 21: 25})
    cut = b"".join(_lines(11, 20).splitlines(keepends=True)[:4])  # seqs 11-14 survived
    path = folder / segment_name(11)
    if compressed:
        path.unlink()
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(cut))
    else:
        path.write_bytes(cut)
    assert log_status(tmp_path).gaps == [(14, 21)]


def test_a_log_whose_first_segments_are_gone_says_where_it_starts(tmp_path: Path) -> None:
    _log(tmp_path, {11: 20})
    status = log_status(tmp_path)
    assert status.gaps == [(0, 11)] and "starts at seq 11" in status.problems[0]


def test_a_damaged_last_line_still_tells_its_seq(tmp_path: Path) -> None:
    folder = _log(tmp_path, {1: 10, 11: 20})
    path = folder / segment_name(1)
    path.write_bytes(path.read_bytes().replace(b'"ping"}}\n', b'"pong"}}\n'))  # every crc32 fails
    assert log_status(tmp_path).gaps == []


def test_junk_is_one_error_naming_it(tmp_path: Path) -> None:
    folder = _log(tmp_path, {1: 10})
    (folder / (segment_name(11) + ".gz")).write_bytes(_lines(11, 12))
    with pytest.raises(LogError, match=r"00000000000000000011\.jsonl\.gz is not gz-compressed"):
        log_status(tmp_path)


def test_a_truncated_compressed_segment_is_one_error_naming_it(tmp_path: Path) -> None:
    folder = _log(tmp_path, {1: 10, 11: 20})
    (folder / (segment_name(1) + ".gz")).write_bytes(gzip.compress(_lines(1, 10))[:-20])
    (folder / segment_name(1)).unlink()
    with pytest.raises(LogError, match=r"cannot read .*00000000000000000001\.jsonl\.gz"):
        log_status(tmp_path)
