"""Tests of ingest.log.writer: the single writer's seq, rotation, recovery, fsync policies and failures."""

from __future__ import annotations

import gzip
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ingest.errors import LogError, LogWriteError
from ingest.log.envelope import Origin, decode_line
from ingest.log.frames import Frame, inspect_frame
from ingest.log.lock import probe_lock
from ingest.log.reader import ReadStats, iter_log
from ingest.log.segments import RotationPolicy, first_seq_of, list_segments, segment_name
from ingest.log.writer import FsyncPolicy, LogWriter, events_dir
from tests.conftest import TIMEOUT_FACTOR


ORIGIN = Origin("agent_ws", "in", "agent_x", "conn-1", "conv_1")
LINUX = sys.platform.startswith("linux")


def _frame(n: int) -> Frame:
    return inspect_frame(f'{{"type":"user_transcript","user_transcription_event":{{"text":"hello {n}"}}}}')


def _open(data_dir: Path, **kwargs: object) -> LogWriter:
    kwargs.setdefault("fsync", FsyncPolicy.NEVER)
    return LogWriter.open(data_dir, **kwargs)  # type: ignore[arg-type]


def _append(data_dir: Path, n: int, **kwargs: object) -> list[int]:
    with _open(data_dir, **kwargs) as writer:
        return [writer.append(ORIGIN, _frame(i)) for i in range(n)]


def _seqs(data_dir: Path) -> list[int]:
    stats = ReadStats()
    seqs = [line.seq for line in iter_log(events_dir(data_dir), stats=stats)]
    assert stats.corrupt == [] and not stats.partial_tail
    return seqs


def _snapshot(paths: list[Path]) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in paths}


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout * TIMEOUT_FACTOR
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# --- seq ---------------------------------------------------------------------------------------


def test_seq_increments_across_appends(tmp_path: Path) -> None:
    """Each append returns the previous seq + 1, starting at 1, and lands in segment 1."""
    with _open(tmp_path) as writer:
        assert writer.next_seq == 1
        assert [writer.append(ORIGIN, _frame(i)) for i in range(5)] == [1, 2, 3, 4, 5]
        assert writer.next_seq == 6
        assert writer.stats.lines == 5
        assert writer.active_segment == events_dir(tmp_path) / segment_name(1)
    assert _seqs(tmp_path) == [1, 2, 3, 4, 5]


def test_seq_continues_across_close_and_reopen(tmp_path: Path) -> None:
    """seq continues over restarts, with no gap and no reuse."""
    assert _append(tmp_path, 3) == [1, 2, 3]
    assert _append(tmp_path, 2) == [4, 5]
    with _open(tmp_path) as writer:
        assert writer.recovery.next_seq == 6
        assert writer.recovery.quarantined is None
    assert _append(tmp_path, 1) == [6]
    assert _seqs(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_append_writes_envelope_and_received_at(tmp_path: Path) -> None:
    """The line carries the origin and the given received_at, and the frame bytes verbatim."""
    moment = datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)
    data = '{"type":"agent_response","agent_response_event":{"agent_response":"Ol\\u00e1"}}'
    with _open(tmp_path) as writer:
        writer.append(ORIGIN, inspect_frame(data), received_at=moment)
    [line] = list(iter_log(events_dir(tmp_path)))
    assert line.received_at == "2026-11-25T12:00:00.123456Z"
    assert line.envelope["connection_id"] == "conn-1"
    assert line.frame == data.encode()


def test_append_after_close_raises(tmp_path: Path) -> None:
    """A closed writer refuses appends with LogWriteError."""
    writer = _open(tmp_path)
    writer.close()
    with pytest.raises(LogWriteError, match="closed"):
        writer.append(ORIGIN, _frame(0))


def test_open_failure_releases_lock(tmp_path: Path) -> None:
    """When the log folder cannot be made, open raises LogError and leaves no lock held."""
    (tmp_path / "events").write_bytes(b"not a folder")
    with pytest.raises(LogError, match="cannot open the log"):
        _open(tmp_path)
    assert probe_lock(tmp_path) is None


# --- rotation ----------------------------------------------------------------------------------


def test_rotation_by_size(tmp_path: Path) -> None:
    """Segments roll once they reach max_bytes, are named after their first seq, and seq is contiguous."""
    max_bytes = 1000
    with _open(tmp_path, rotation=RotationPolicy(max_bytes=max_bytes)) as writer:
        seqs = [writer.append(ORIGIN, _frame(i)) for i in range(40)]
        rotations = writer.stats.rotations
    segments = list_segments(events_dir(tmp_path))
    assert len(segments) == rotations + 1 >= 3
    assert seqs == list(range(1, 41)) == _seqs(tmp_path)
    for segment in segments:
        lines = segment.read_bytes().splitlines(keepends=True)
        assert decode_line(lines[0]).seq == first_seq_of(segment)
        if segment != segments[-1]:
            # Closed: reached the limit, but only with its last line.
            assert sum(map(len, lines)) >= max_bytes
            assert sum(map(len, lines[:-1])) < max_bytes


def test_rotation_by_age_with_constructed_time(tmp_path: Path) -> None:
    """A reopened segment whose first line is older than max_age rolls on the next append."""
    old = datetime.now(UTC) - timedelta(hours=2)
    with _open(tmp_path) as writer:
        writer.append(ORIGIN, _frame(0), received_at=old)
    with _open(tmp_path, rotation=RotationPolicy(max_age=3600)) as writer:
        assert writer.append(ORIGIN, _frame(1)) == 2
        assert writer.stats.rotations == 1
        assert writer.active_segment is not None and writer.active_segment.name == segment_name(2)
    # A young first line does not roll.
    with _open(tmp_path, rotation=RotationPolicy(max_age=3600)) as writer:
        writer.append(ORIGIN, _frame(2))
        assert writer.stats.rotations == 0
    assert [p.name for p in list_segments(events_dir(tmp_path))] == [segment_name(1), segment_name(2)]


def test_rotation_by_age_with_real_clock(tmp_path: Path) -> None:
    """With a tiny max_age, appends roll to a new segment within a bounded wait."""
    with _open(tmp_path, rotation=RotationPolicy(max_age=0.05)) as writer:
        assert _wait_for(lambda: writer.append(ORIGIN, _frame(0)) > 0 and writer.stats.rotations >= 1)
        last = writer.next_seq - 1
    segments = list_segments(events_dir(tmp_path))
    assert len(segments) >= 2
    assert segments[-1].name == segment_name(last)
    assert _seqs(tmp_path) == list(range(1, last + 1))


def test_segment_age_counts_from_its_first_line(tmp_path: Path) -> None:
    """A segment left empty for longer than max_age is not rolled right after its first line."""
    with _open(tmp_path, rotation=RotationPolicy(max_age=0.3)) as writer:
        opened = time.monotonic()
        assert _wait_for(lambda: time.monotonic() - opened > 0.35)  # idle, empty, older than max_age
        writer.append(ORIGIN, _frame(0))
        writer.append(ORIGIN, _frame(1))
        assert writer.stats.rotations == 0
    assert [p.name for p in list_segments(events_dir(tmp_path))] == [segment_name(1)]


def test_closed_segments_never_change(tmp_path: Path) -> None:
    """Rolled segments stay byte for byte the same through more appends and restarts."""
    policy = RotationPolicy(max_bytes=600)
    _append(tmp_path, 12, rotation=policy)
    closed = list_segments(events_dir(tmp_path))[:-1]
    assert len(closed) >= 2
    before = _snapshot(closed)
    _append(tmp_path, 12, rotation=policy)
    _append(tmp_path, 12, rotation=policy, fsync=FsyncPolicy.ALWAYS)
    assert _snapshot(closed) == before
    assert _seqs(tmp_path) == list(range(1, 37))


def test_compressed_last_segment_starts_a_new_one(tmp_path: Path) -> None:
    """When the last segment was compressed, open starts a new segment at the next seq."""
    _append(tmp_path, 3)
    plain = events_dir(tmp_path) / segment_name(1)
    compressed = plain.with_name(plain.name + ".gz")
    compressed.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    before = compressed.read_bytes()
    with _open(tmp_path) as writer:
        assert writer.next_seq == 4
        assert writer.append(ORIGIN, _frame(3)) == 4
        assert writer.active_segment == events_dir(tmp_path) / segment_name(4)
    assert compressed.read_bytes() == before
    assert _seqs(tmp_path) == [1, 2, 3, 4]


# --- recovery ----------------------------------------------------------------------------------


def _lines(segment: Path) -> list[bytes]:
    return segment.read_bytes().splitlines(keepends=True)


def _sidecars(segment: Path) -> list[Path]:
    return sorted(p for p in segment.parent.iterdir() if p.name.startswith(segment.name + ".torn-"))


def _read_all(data_dir: Path) -> tuple[list[int], ReadStats]:
    stats = ReadStats()
    return [line.seq for line in iter_log(events_dir(data_dir), stats=stats)], stats


# A torn tail: what a write that did not finish, or a power cut, leaves after the last line.
def _partial_last_line(lines: list[bytes]) -> tuple[list[bytes], bytes]:
    return lines, lines[-1][:-15]


def _zeros_to_eof(lines: list[bytes]) -> tuple[list[bytes], bytes]:
    return lines, b"\x00" * 4096


def _zeros_newline_zeros(lines: list[bytes]) -> tuple[list[bytes], bytes]:
    return lines, b"\x00" * 100 + b"\n" + b"\x00" * 10


def _half_line_then_zeros(lines: list[bytes]) -> tuple[list[bytes], bytes]:
    return lines, lines[-1][:30] + b"\x00" * 500 + b"\n"


@pytest.mark.parametrize(
    "tear", [_partial_last_line, _zeros_to_eof, _zeros_newline_zeros, _half_line_then_zeros]
)
def test_a_torn_tail_is_moved_to_a_sidecar(
    tmp_path: Path, tear: Callable[[list[bytes]], tuple[list[bytes], bytes]]
) -> None:
    """A torn tail goes to <segment>.torn-* with exactly the cut bytes; seq continues after the last line."""
    _append(tmp_path, 4)
    segment = events_dir(tmp_path) / segment_name(1)
    good, cut = tear(_lines(segment))
    good_bytes = b"".join(good)
    segment.write_bytes(good_bytes + cut)

    with _open(tmp_path) as writer:
        recovery = writer.recovery
        assert recovery.segment == segment
        assert recovery.next_seq == 5 == recovery.first_bad_seq
        assert recovery.quarantined_bytes == len(cut)
        assert recovery.quarantined is not None
        assert recovery.quarantined.name.startswith(segment.name + ".torn-")
        assert recovery.quarantined.read_bytes() == cut
        assert recovery.damaged == ()
        assert segment.read_bytes() == good_bytes
        assert writer.append(ORIGIN, _frame(99)) == 5
        assert writer.active_segment == segment

    assert _seqs(tmp_path) == [1, 2, 3, 4, 5]
    assert list_segments(events_dir(tmp_path)) == [segment]


# Damage to a complete line: it stays where it is, and so does everything after it.
def _flipped_byte(line: bytes) -> bytes:
    damaged = bytearray(line)
    damaged[line.index(b"hello") + 2] ^= 0x01  # in the frame: crc32 covers the frame's bytes
    return bytes(damaged)


def _bad_crc_valid_json(line: bytes) -> bytes:
    damaged = line.replace(b"hello", b"jello")
    assert damaged != line
    return damaged


def _not_json(line: bytes) -> bytes:
    return line[:40] + b"\n"


@pytest.mark.parametrize("damage", [_flipped_byte, _bad_crc_valid_json, _not_json])
@pytest.mark.parametrize("where", [1, 3], ids=["middle", "last"])
def test_a_damaged_complete_line_stays_and_costs_only_itself(
    tmp_path: Path, damage: Callable[[bytes], bytes], where: int
) -> None:
    """A complete line that fails to parse or its crc32 is not moved; its seq is never given again."""
    _append(tmp_path, 4)
    segment = events_dir(tmp_path) / segment_name(1)
    lines = _lines(segment)
    lines[where] = damage(lines[where])
    damaged = b"".join(lines)
    segment.write_bytes(damaged)
    with _open(tmp_path) as writer:
        assert writer.recovery.quarantined is None and _sidecars(segment) == []
        assert writer.recovery.damaged == (sum(map(len, lines[:where])),)
        assert segment.read_bytes() == damaged
        assert writer.append(ORIGIN, _frame(99)) == 5
    seqs, stats = _read_all(tmp_path)
    assert seqs == [s for s in range(1, 6) if s != where + 1]
    assert stats.corrupt == [(segment.name, sum(map(len, lines[:where])))]


def test_one_flipped_byte_in_line_20_costs_line_20_only(tmp_path: Path) -> None:
    """The reproduction: a flipped byte in line 20 of 326 moved 307 lines aside and reused their seqs."""
    _append(tmp_path, 326)
    segment = events_dir(tmp_path) / segment_name(1)
    lines = _lines(segment)
    lines[19] = _flipped_byte(lines[19])
    segment.write_bytes(b"".join(lines))
    assert _append(tmp_path, 1) == [327]
    assert _sidecars(segment) == []
    seqs, stats = _read_all(tmp_path)
    assert seqs == [s for s in range(1, 328) if s != 20]
    assert stats.corrupt == [(segment.name, sum(map(len, lines[:19])))]


def test_a_hole_of_zeros_before_later_lines_costs_only_the_hole(tmp_path: Path) -> None:
    """A reordered writeback can leave zeros where earlier bytes were and later lines intact: they stay."""
    _append(tmp_path, 6)
    segment = events_dir(tmp_path) / segment_name(1)
    lines = _lines(segment)
    # Lines 3 and 4 (and the start of 5) were never written back; the page holding the rest of 5 was.
    hole = lines[2][:10] + b"\x00" * (len(lines[2]) - 10 + len(lines[3]) + 20) + lines[4][20:]
    data = b"".join([*lines[:2], hole, lines[5]])
    segment.write_bytes(data)
    with _open(tmp_path) as writer:
        assert writer.recovery.quarantined is None
        assert writer.recovery.damaged == (len(lines[0]) + len(lines[1]),)
        assert segment.read_bytes() == data
        assert writer.append(ORIGIN, _frame(99)) == 7
    seqs, stats = _read_all(tmp_path)
    assert seqs == [1, 2, 6, 7]
    assert len(stats.corrupt) == 1


def test_a_damaged_line_before_a_torn_tail_stays(tmp_path: Path) -> None:
    """Only the torn tail after the last complete line is cut; a damaged complete line before it stays."""
    _append(tmp_path, 3)
    segment = events_dir(tmp_path) / segment_name(1)
    lines = _lines(segment)
    lines[2] = _bad_crc_valid_json(lines[2])
    kept = b"".join(lines)
    segment.write_bytes(kept + b'{"seq":4,"recei')
    with _open(tmp_path) as writer:
        assert writer.recovery.quarantined is not None
        assert writer.recovery.quarantined.read_bytes() == b'{"seq":4,"recei'
        assert writer.recovery.damaged == (len(lines[0]) + len(lines[1]),)
        assert segment.read_bytes() == kept
        assert writer.append(ORIGIN, _frame(99)) == 4


def test_a_repeated_line_stays_and_seq_goes_on_past_it(tmp_path: Path) -> None:
    """A valid line whose seq does not follow is a reader's duplicate, not a torn tail: nothing is cut."""
    _append(tmp_path, 4)
    segment = events_dir(tmp_path) / segment_name(1)
    lines = _lines(segment)
    segment.write_bytes(b"".join([*lines, lines[1]]))
    with _open(tmp_path) as writer:
        assert writer.recovery.quarantined is None
        assert writer.append(ORIGIN, _frame(99)) == 5


def test_fully_torn_segment_recovers_to_empty(tmp_path: Path) -> None:
    """A segment whose only line is torn is emptied and seq restarts at its first seq."""
    _append(tmp_path, 2, rotation=RotationPolicy(max_bytes=1))
    second = events_dir(tmp_path) / segment_name(2)
    torn = second.read_bytes()[:-1]
    second.write_bytes(torn)
    with _open(tmp_path) as writer:
        assert writer.next_seq == 2
        assert writer.recovery.quarantined is not None
        assert writer.recovery.quarantined.read_bytes() == torn
        assert second.read_bytes() == b""
        assert writer.append(ORIGIN, _frame(1)) == 2
    assert _seqs(tmp_path) == [1, 2]


def test_repeated_recoveries_keep_every_sidecar(tmp_path: Path) -> None:
    """Two torn tails recovered in a row (possibly in the same second) both stay on disk."""
    _append(tmp_path, 2)
    segment = events_dir(tmp_path) / segment_name(1)
    cuts = [b'{"seq":3,"recei', b"\x00\x00\x00"]
    for cut in cuts:
        with segment.open("ab") as f:
            f.write(cut)
        _append(tmp_path, 0)
    assert sorted(p.read_bytes() for p in _sidecars(segment)) == sorted(cuts)
    assert _append(tmp_path, 1) == [3]


def test_empty_active_segment_recovers(tmp_path: Path) -> None:
    """An empty active segment (no line yet) is kept and used, seq from its name."""
    _append(tmp_path, 0)
    segment = events_dir(tmp_path) / segment_name(1)
    assert segment.read_bytes() == b""
    with _open(tmp_path) as writer:
        assert writer.recovery.quarantined is None
        assert writer.next_seq == 1
        assert writer.append(ORIGIN, _frame(0)) == 1
        assert writer.active_segment == segment


def test_empty_segment_after_rotation_crash_recovers(tmp_path: Path) -> None:
    """A crash right after creating a segment leaves it empty; the next start continues in it."""
    _append(tmp_path, 3)
    first = events_dir(tmp_path) / segment_name(1)
    before = first.read_bytes()
    created = events_dir(tmp_path) / segment_name(4)
    created.write_bytes(b"")
    with _open(tmp_path) as writer:
        assert writer.next_seq == 4
        assert writer.recovery.quarantined is None
        assert writer.append(ORIGIN, _frame(3)) == 4
        assert writer.active_segment == created
    assert first.read_bytes() == before
    assert _seqs(tmp_path) == [1, 2, 3, 4]


# --- durability policies -----------------------------------------------------------------------


@pytest.mark.parametrize("policy", list(FsyncPolicy))
def test_each_line_reaches_the_os_before_append_returns(tmp_path: Path, policy: FsyncPolicy) -> None:
    """Under every fsync policy a line is readable from another fd as soon as append returns."""
    with _open(tmp_path, fsync=policy, fsync_interval=60.0) as writer:
        segment = writer.active_segment
        assert segment is not None
        for i in range(3):
            seq = writer.append(ORIGIN, _frame(i))
            with segment.open("rb") as other:
                last = other.read().splitlines()[-1]
            assert decode_line(last).seq == seq
        if policy is FsyncPolicy.ALWAYS:
            assert writer.stats.fsyncs == 3
        else:
            assert writer.stats.fsyncs == 0


def test_interval_fsync_thread_runs(tmp_path: Path) -> None:
    """Under the interval policy a background thread fsyncs the dirty segment within a bounded wait."""
    with _open(tmp_path, fsync=FsyncPolicy.INTERVAL, fsync_interval=0.01) as writer:
        writer.append(ORIGIN, _frame(0))
        assert _wait_for(lambda: writer.stats.fsyncs >= 1)
        count = writer.stats.fsyncs
        writer.append(ORIGIN, _frame(1))
        assert _wait_for(lambda: writer.stats.fsyncs > count)


def test_never_policy_has_no_fsync_thread(tmp_path: Path) -> None:
    """The never policy starts no background thread."""
    with _open(tmp_path, fsync=FsyncPolicy.NEVER) as writer:
        assert writer._thread is None


# --- failures are never retried ----------------------------------------------------------------


def _replace_fd(writer: LogWriter, path: str | Path, flags: int) -> None:
    """Point the writer's active fd at another open file, behind its back."""
    assert writer._active is not None
    fd = os.open(path, flags)
    try:
        os.dup2(fd, writer._active.fd)
    finally:
        os.close(fd)


def test_failed_write_is_not_retried(tmp_path: Path) -> None:
    """After a failed write, append keeps raising even when writing would work again."""
    writer = _open(tmp_path)
    writer.append(ORIGIN, _frame(0))
    segment = writer.active_segment
    assert segment is not None
    before = segment.read_bytes()
    _replace_fd(writer, segment, os.O_RDONLY)  # writes now fail with EBADF
    with pytest.raises(LogWriteError, match="stopping") as first:
        writer.append(ORIGIN, _frame(1))
    assert isinstance(first.value.__cause__, OSError)
    _replace_fd(writer, segment, os.O_WRONLY | os.O_APPEND)  # a retry would now succeed
    with pytest.raises(LogWriteError):
        writer.append(ORIGIN, _frame(2))
    assert writer.next_seq == 2
    assert segment.read_bytes() == before
    with pytest.raises(LogWriteError):
        writer.close()
    assert probe_lock(tmp_path) is None
    assert _append(tmp_path, 1) == [2]


def test_write_to_closed_fd_raises_log_write_error(tmp_path: Path) -> None:
    """A write on a closed fd raises LogWriteError, every time, and close reports it too."""
    writer = _open(tmp_path)
    assert writer._active is not None
    os.close(writer._active.fd)
    with pytest.raises(LogWriteError, match="stopping"):
        writer.append(ORIGIN, _frame(0))
    with pytest.raises(LogWriteError):
        writer.append(ORIGIN, _frame(1))
    with pytest.raises(LogWriteError):
        writer.close()
    assert probe_lock(tmp_path) is None


@pytest.mark.skipif(not (LINUX and os.path.exists("/dev/full")), reason="needs Linux /dev/full")
def test_disk_full_maps_to_log_write_error(tmp_path: Path) -> None:
    """A write failing with ENOSPC (/dev/full) raises LogWriteError with the OS's reason."""
    writer = _open(tmp_path)
    _replace_fd(writer, "/dev/full", os.O_WRONLY)
    with pytest.raises(LogWriteError, match="No space left on device"):
        writer.append(ORIGIN, _frame(0))
    with pytest.raises(LogWriteError):
        writer.close()


@pytest.mark.skipif(not LINUX, reason="fsync of a pipe fails with EINVAL on Linux")
def test_failed_fsync_under_always_is_not_retried(tmp_path: Path) -> None:
    """Under the always policy a failed fsync raises LogWriteError and stops the writer."""
    writer = _open(tmp_path, fsync=FsyncPolicy.ALWAYS)
    read_end, write_end = os.pipe()
    try:
        assert writer._active is not None
        os.dup2(write_end, writer._active.fd)
        with pytest.raises(LogWriteError, match="stopping"):
            writer.append(ORIGIN, _frame(0))
        with pytest.raises(LogWriteError):
            writer.append(ORIGIN, _frame(1))
        with pytest.raises(LogWriteError):
            writer.close()
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.skipif(not LINUX, reason="fsync of a pipe fails with EINVAL on Linux")
def test_failed_background_fsync_stops_the_writer(tmp_path: Path) -> None:
    """A failed interval fsync calls on_error once, and the next append raises the same error."""
    errors: list[LogWriteError] = []
    writer = _open(tmp_path, fsync=FsyncPolicy.INTERVAL, fsync_interval=0.01, on_error=errors.append)
    read_end, write_end = os.pipe()
    try:
        assert writer._active is not None
        os.dup2(write_end, writer._active.fd)
        writer.append(ORIGIN, _frame(0))  # the write itself succeeds (into the pipe)
        assert _wait_for(lambda: bool(errors))
        assert len(errors) == 1
        assert "fsync" in str(errors[0])
        with pytest.raises(LogWriteError) as raised:
            writer.append(ORIGIN, _frame(1))
        assert raised.value is errors[0]
        with pytest.raises(LogWriteError):
            writer.close()
    finally:
        os.close(read_end)
        os.close(write_end)
    assert probe_lock(tmp_path) is None


def test_deferred_lines_are_written_together_in_seq_order(tmp_path: Path) -> None:
    """A burst's lines wait for flush(), or for the next plain append, a roll or close."""
    writer = _open(tmp_path, rotation=RotationPolicy(max_bytes=10**9))
    try:
        segment = writer.active_segment
        assert segment is not None
        size = segment.stat().st_size
        deferred = [writer.append(ORIGIN, _frame(i), defer=True) for i in range(3)]
        assert segment.stat().st_size == size and writer.stats.lines == 3
        writer.flush()
        written = segment.stat().st_size
        assert written > size
        writer.append(ORIGIN, _frame(3), defer=True)
        plain = writer.append(ORIGIN, _frame(4))  # writes the deferred line first
        writer.append(ORIGIN, _frame(5), defer=True)
    finally:
        writer.close()  # writes the last deferred line
    assert deferred == [1, 2, 3] and plain == 5
    assert _seqs(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_a_roll_writes_deferred_lines_to_the_segment_they_belong_to(tmp_path: Path) -> None:
    writer = _open(tmp_path, rotation=RotationPolicy(max_bytes=400))
    try:
        for i in range(12):
            writer.append(ORIGIN, _frame(i), defer=True)
    finally:
        writer.close()
    assert _seqs(tmp_path) == list(range(1, 13))
    segments = list_segments(events_dir(tmp_path))
    assert len(segments) > 2
    for path in segments:  # each segment holds exactly the seqs its name says it starts at
        seqs = [decode_line(raw).seq for raw in path.read_bytes().splitlines()]
        assert seqs and seqs[0] == first_seq_of(path) and seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_under_fsync_always_nothing_is_deferred(tmp_path: Path) -> None:
    writer = _open(tmp_path, fsync=FsyncPolicy.ALWAYS)
    try:
        segment = writer.active_segment
        assert segment is not None
        size = segment.stat().st_size
        writer.append(ORIGIN, _frame(0), defer=True)
        assert segment.stat().st_size > size and writer.stats.fsyncs == 1
    finally:
        writer.close()
