"""The append-only log: the line format, segments, the one writer, the reader, the lock.

This package is the only code that knows a line's bytes or how to find the
segment holding a seq. Everything here is synchronous; the writer's fsync
thread is its only thread.

"""

from __future__ import annotations

from ingest.log.envelope import EVENT_KEY, LineError, LogLine, Origin, decode_line, encode_line
from ingest.log.frames import Frame, inspect_frame
from ingest.log.lock import DataDirLock, LockHolder, probe_lock
from ingest.log.reader import DamagedLine, ReadStats, SegmentFile, iter_log, last_seq_of, open_segment
from ingest.log.segments import RotationPolicy, check_segments, first_seq_of, list_segments, segment_name
from ingest.log.status import LogStatus, log_status
from ingest.log.writer import DEFAULT_FSYNC_INTERVAL, FsyncPolicy, LogWriter, Recovery, events_dir


__all__ = [
    "DEFAULT_FSYNC_INTERVAL",
    "EVENT_KEY",
    "DamagedLine",
    "DataDirLock",
    "Frame",
    "FsyncPolicy",
    "LineError",
    "LockHolder",
    "LogLine",
    "LogStatus",
    "LogWriter",
    "Origin",
    "ReadStats",
    "Recovery",
    "RotationPolicy",
    "SegmentFile",
    "check_segments",
    "decode_line",
    "encode_line",
    "events_dir",
    "first_seq_of",
    "inspect_frame",
    "iter_log",
    "last_seq_of",
    "list_segments",
    "log_status",
    "open_segment",
    "probe_lock",
    "segment_name",
]
