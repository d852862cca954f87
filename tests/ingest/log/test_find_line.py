"""Finding one line by seq: a binary search in a large plain segment, a scan in a compressed one."""

from __future__ import annotations

import gzip
from pathlib import Path

from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.reader import find_line
from ingest.log.segments import RotationPolicy
from ingest.log.writer import FsyncPolicy, LogWriter, events_dir
from ingest.simulator import events


ORIGIN = Origin("agent_ws", "in", "agent_x", "c1", "conv_1")


def test_every_line_is_found_in_large_and_rolled_segments(data_dir: Path) -> None:
    with LogWriter.open(
        data_dir, fsync=FsyncPolicy.NEVER, command="test", rotation=RotationPolicy(max_bytes=1_000_000)
    ) as writer:
        for i in range(6000):
            writer.append(ORIGIN, inspect_frame(events.flood_frame(i)))
        assert writer.stats.rotations >= 1
    folder = events_dir(data_dir)
    for seq in (1, 2, 2999, 3000, 3001, 4500, 5999, 6000):
        line = find_line(folder, seq)
        assert line is not None and line.seq == seq
        assert line.frame.decode() == events.flood_frame(seq - 1)
    assert find_line(folder, 0) is None
    assert find_line(folder, 6001) is None


def test_a_compressed_segment_is_read_and_a_torn_tail_is_not_a_line(data_dir: Path) -> None:
    with LogWriter.open(data_dir, fsync=FsyncPolicy.NEVER, command="test") as writer:
        for i in range(10):
            writer.append(ORIGIN, inspect_frame(events.flood_frame(i)))
        segment = writer.active_segment
        assert segment is not None
    data = segment.read_bytes()
    segment.write_bytes(data[:-5])  # the last line torn
    assert find_line(events_dir(data_dir), 10) is None
    assert find_line(events_dir(data_dir), 9) is not None
    zipped = segment.with_name(segment.name + ".gz")
    zipped.write_bytes(gzip.compress(data))
    segment.unlink()
    line = find_line(events_dir(data_dir), 10)
    assert line is not None and line.seq == 10
