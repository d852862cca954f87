"""The append-only event log: the one writer, its fsync policy and its recovery.

This module is the only code that opens a segment for writing. Guarantees:

* every :meth:`LogWriter.append` ends with the whole line handed to the OS by
  ``write`` (no user-space buffer), so a killed process loses nothing it had
  appended;
* ``seq`` is +1 per line over the whole log, across restarts;
* only the active segment is written; a rolled segment is fsynced, then never
  opened for writing again; the directory is fsynced after creating one;
* on open, a torn tail of the active segment (see :func:`recover_active_segment`)
  is moved to a sidecar file next to it (``<segment>.torn-<time>``), never
  deleted; a damaged complete line stays where it is, and so does every line
  after it;
* a seq that a complete line of the log holds, valid or damaged, is never
  given again. The seqs of lines a power cut dropped before they reached the
  disk are (nothing on the disk remembers them): a projection that had read
  them notices, since its position names the line by its bytes
  (:mod:`projections.runner`);
* a failed write or fsync is never retried: the writer refuses further appends
  and raises :class:`~ingest.errors.LogWriteError`.

Loss windows on power failure (a killed process loses nothing in every mode):

* ``always``: none; each append is fsynced before it returns (slow);
* ``interval``: at most ``fsync_interval`` (200 ms by default), fsynced by a
  background thread off the receive path;
* ``never``: whatever the OS has not written back yet (typically up to 30 s);
  fsynced only on rotation and shutdown.

"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ingest.errors import LogError, LogWriteError
from ingest.log.envelope import LineError, Origin, decode_line, encode_line, format_epoch_ns, format_timestamp
from ingest.log.frames import Frame
from ingest.log.lock import DataDirLock, fsync_dir
from ingest.log.segments import RotationPolicy, check_segments, first_seq_of, segment_name
from ingest.observe.histogram import FSYNC_BUCKETS, Histogram


__all__ = [
    "DEFAULT_FSYNC_INTERVAL",
    "FsyncPolicy",
    "LogWriter",
    "Recovery",
    "SegmentCheck",
    "check_segment_bytes",
    "events_dir",
    "recover_active_segment",
]

log = logging.getLogger(__name__)

DEFAULT_FSYNC_INTERVAL = 0.2

_O_APPEND = os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0)


class FsyncPolicy(enum.StrEnum):
    """When appended lines are forced to stable storage."""

    ALWAYS = "always"  # fsync each line before append returns: no loss window
    INTERVAL = "interval"  # background fsync at most every fsync_interval
    NEVER = "never"  # only on rotation and shutdown: the OS decides


def events_dir(data_dir: Path) -> Path:
    """Return the folder holding the segments of ``data_dir``'s log."""
    return data_dir / "events"


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening the log found and did.

    Attributes:
        segment: The active segment checked.
        next_seq: The seq the next line gets.
        quarantined: The sidecar file holding a cut torn tail, if any.
        quarantined_bytes: How many bytes were moved there.
        first_bad_seq: The seq the first cut line would have had.
        damaged: Byte offsets of the damaged complete lines left in place
            (readers skip and report them).

    """

    segment: Path | None
    next_seq: int
    quarantined: Path | None = None
    quarantined_bytes: int = 0
    first_bad_seq: int | None = None
    damaged: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SegmentCheck:
    """What :func:`check_segment_bytes` found in a segment's bytes.

    Attributes:
        keep: How many bytes to keep: the torn tail starts there.
        next_seq: The seq the next line appended after ``keep`` gets.
        damaged: Byte offsets of the damaged complete lines before ``keep``.

    """

    keep: int
    next_seq: int
    damaged: tuple[int, ...]


def check_segment_bytes(data: bytes, first_seq: int) -> SegmentCheck:
    """Find a segment's torn tail and damaged lines, and the seq that follows its lines.

    The torn tail is what an unfinished write or a power cut leaves after the
    last line: the bytes from the start of the first line holding a NUL byte,
    or of a last line without its newline, to the end — provided no valid line
    follows. A NUL is in no line the writer writes (JSON has no raw control
    bytes); it is what a power cut leaves where appended blocks were allocated
    but never written. A line without its newline is a write that did not
    finish: no reader ever handed it on.

    Everything else stays: a complete line that does not parse or fails its
    crc32, wherever it is, and a hole of zeros that valid lines follow (a
    writeback that reached the disk out of order: only the hole is bad).
    Readers skip such lines and report them.

    Seq: the next line gets one more than the highest seq of a valid line, and
    no less than one past every complete line kept (a damaged line is counted
    as holding the seq after the line before it), so no seq a kept line holds
    is given again.

    """
    offset = 0
    expected = first_seq
    damaged: list[int] = []
    holes: list[int] = []  # lines holding a NUL since the last valid line
    torn_at: int | None = None
    size = len(data)
    while offset < size:
        end = data.find(b"\n", offset)
        if end < 0:
            if torn_at is None:
                torn_at = offset
            break
        try:
            line = decode_line(data[offset:end])
        except LineError:
            if torn_at is None and data.find(b"\0", offset, end) < 0:
                damaged.append(offset)
                expected += 1
            else:
                holes.append(offset)
                if torn_at is None:
                    torn_at = offset
        else:
            if holes:  # valid lines follow them: holes, not a torn tail
                damaged.extend(holes)
                expected += len(holes)
                holes.clear()
                torn_at = None
            expected = max(expected, line.seq + 1)
        offset = end + 1
    damaged.sort()
    return SegmentCheck(size if torn_at is None else torn_at, expected, tuple(damaged))


def recover_active_segment(segment: Path) -> Recovery:
    """Check every line of the active segment and move a torn tail aside.

    The rule is :func:`check_segment_bytes`'s. A torn tail is copied to a
    sidecar file, fsynced, and only then cut from the segment; nothing else
    is moved.

    """
    first_seq = first_seq_of(segment)
    assert first_seq is not None
    data = segment.read_bytes()
    found = check_segment_bytes(data, first_seq)
    for offset in found.damaged[:5]:
        log.warning("%s holds a damaged line at byte %d: it stays, and readers skip it", segment.name, offset)
    if len(found.damaged) > 5:
        log.warning("%s holds %d more damaged lines", segment.name, len(found.damaged) - 5)
    good, next_seq = found.keep, found.next_seq
    if good == len(data):
        return Recovery(segment, next_seq, damaged=found.damaged)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    sidecar = segment.with_name(f"{segment.name}.torn-{stamp}")
    n = 0
    while sidecar.exists():
        n += 1
        sidecar = segment.with_name(f"{segment.name}.torn-{stamp}-{n}")
    tail = data[good:]
    with sidecar.open("xb") as f:
        f.write(tail)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(segment.parent)
    with segment.open("r+b") as f:
        f.truncate(good)
        f.flush()
        os.fsync(f.fileno())
    log.warning(
        "moved a torn tail of %d bytes (from seq %d) of %s to %s",
        len(tail),
        next_seq,
        segment.name,
        sidecar.name,
    )
    return Recovery(segment, next_seq, sidecar, len(tail), next_seq, found.damaged)


def _first_line_time(segment: Path) -> float | None:
    with segment.open("rb") as f:
        first = f.readline()
    if not first.endswith(b"\n"):
        return None
    try:
        stamp = decode_line(first).received_at
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except (LineError, ValueError):
        return None


@dataclass
class WriterStats:
    """Counters of one writer's life.

    ``fsync_seconds`` times the fsyncs of the active segment (each line's under
    ``always``, the background ones, a rolled segment's); the metrics endpoint
    reads it at scrape time.

    """

    lines: int = 0
    bytes: int = 0
    rotations: int = 0
    fsyncs: int = 0
    fsync_seconds: Histogram = field(default_factory=lambda: Histogram(FSYNC_BUCKETS))


def _timed_fsync(fd: int, seconds: Histogram) -> None:
    started = time.perf_counter()
    os.fsync(fd)
    seconds.observe(time.perf_counter() - started)


@dataclass
class _Active:
    path: Path
    fd: int
    size: int
    opened_at: float
    dirty: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class LogWriter:
    """The single writer of a data dir's log.

    Open it with :meth:`open`; it takes the data dir's lock, recovers the
    active segment and starts the fsync thread for ``interval``. Call
    :meth:`close` (or use it as a context manager) to fsync and release.

    Appends run on the caller's thread; they are not thread-safe.

    """

    def __init__(
        self,
        data_dir: Path,
        lock: DataDirLock,
        recovery: Recovery,
        active: _Active,
        *,
        fsync: FsyncPolicy,
        fsync_interval: float,
        rotation: RotationPolicy,
        on_error: Callable[[LogWriteError], None] | None,
    ) -> None:
        self.data_dir = data_dir
        self.recovery = recovery
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self.rotation = rotation
        self.stats = WriterStats()
        self.next_seq = recovery.next_seq
        self._lock = lock
        self._active: _Active | None = active
        self._on_error = on_error
        self._error: LogWriteError | None = None
        self._deferred: list[bytes] = []  # lines appended with defer=True, not written yet
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if fsync is FsyncPolicy.INTERVAL:
            self._thread = threading.Thread(target=self._fsync_loop, name="capture-fsync", daemon=True)
            self._thread.start()

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        fsync: FsyncPolicy = FsyncPolicy.INTERVAL,
        fsync_interval: float = DEFAULT_FSYNC_INTERVAL,
        rotation: RotationPolicy | None = None,
        command: str = "capture ingest",
        on_error: Callable[[LogWriteError], None] | None = None,
    ) -> LogWriter:
        """Lock ``data_dir``, recover its log and open the active segment.

        Args:
            on_error: Called from the fsync thread when a background fsync
                fails; the next :meth:`append` raises the same error.

        Raises:
            LockedError: another process writes to this data dir.
            LogError: the log folder cannot be created or read, or holds junk
                named like a segment (:func:`~ingest.log.segments.check_segments`).

        """
        lock = DataDirLock(data_dir, command)
        lock.acquire()
        try:
            folder = events_dir(data_dir)
            folder.mkdir(parents=True, exist_ok=True)
            all_segments = check_segments(folder)
            segments = [p for p in all_segments if p.suffix == ".jsonl"]
            if all_segments and segments and all_segments[-1] == segments[-1]:
                recovery = recover_active_segment(segments[-1])
                path = segments[-1]
            else:
                next_seq = 1
                if all_segments:
                    # The last segment was compressed: it is closed. Count its lines.
                    from ingest.log.reader import last_seq_of

                    next_seq = last_seq_of(all_segments[-1]) + 1
                path = folder / segment_name(next_seq)
                _create_segment(path)
                recovery = Recovery(path, next_seq)
            fd = os.open(path, _O_APPEND)
            size = os.fstat(fd).st_size
            opened_at = (_first_line_time(path) if size else None) or time.time()
        except OSError as exc:
            lock.release()
            raise LogError(f"cannot open the log in {data_dir}: {exc}") from exc
        except BaseException:
            lock.release()
            raise
        active = _Active(path, fd, size, opened_at)
        return cls(
            data_dir,
            lock,
            recovery,
            active,
            fsync=fsync,
            fsync_interval=fsync_interval,
            rotation=rotation or RotationPolicy(),
            on_error=on_error,
        )

    @property
    def active_segment(self) -> Path | None:
        return self._active.path if self._active else None

    @property
    def error(self) -> LogWriteError | None:
        """The failure that made the writer unusable (a write, fsync or roll), or ``None``."""
        return self._error

    def append(
        self, origin: Origin, frame: Frame, received_at: datetime | int | None = None, *, defer: bool = False
    ) -> int:
        """Append one frame as one line and return its seq.

        Args:
            origin: The envelope fields.
            frame: The frame.
            received_at: When it arrived, as a datetime or ``time.time_ns()``;
                now if omitted.
            defer: Keep the line until :meth:`flush` (or the next append
                without ``defer``, or a roll, or :meth:`close`) writes it
                with the others, in one ``write``. A receive loop defers the
                frames of a burst and flushes before it waits for more (see
                ``asyncio``'s ``call_soon``): they were all in this process's
                memory at once anyway. Ignored under ``--fsync always``.

        When this returns (without ``defer``), this line and every deferred
        one have been handed to the OS with ``write`` (and fsynced too under
        ``always``).

        Raises:
            LogWriteError: the write, an fsync or a rotation failed, now or
                earlier; the writer is then unusable.

        """
        if self._error is not None:
            raise self._error
        active = self._active
        if active is None:
            raise LogWriteError("the log is closed")
        if self.rotation.should_rotate(active.size, time.time() - active.opened_at):
            active = self._rotate(active)
        if active.size == 0:
            active.opened_at = time.time()  # a segment's age counts from its first line
        seq = self.next_seq
        if received_at is None:
            stamp = format_epoch_ns(time.time_ns())
        elif isinstance(received_at, int):
            stamp = format_epoch_ns(received_at)
        else:
            stamp = format_timestamp(received_at)
        line = encode_line(seq, stamp, origin, frame)
        if defer and self.fsync is not FsyncPolicy.ALWAYS:
            self._deferred.append(line)
        else:
            self._write(active, line)
        active.size += len(line)
        self.next_seq = seq + 1
        self.stats.lines += 1
        self.stats.bytes += len(line)
        return seq

    @property
    def deferred(self) -> int:
        """How many lines appended with ``defer`` wait for :meth:`flush`."""
        return len(self._deferred)

    def flush(self) -> None:
        """Write the deferred lines (see :meth:`append`), if any, in one ``write``.

        Raises:
            LogWriteError: the write failed, now or earlier; the writer is then unusable.

        """
        if self._error is not None:
            raise self._error
        if self._deferred and self._active is not None:
            self._write(self._active, b"")

    def _write(self, active: _Active, line: bytes) -> None:
        """Write the deferred lines and then ``line`` to the active segment."""
        if self._deferred:
            self._deferred.append(line)
            line = b"".join(self._deferred)
            self._deferred.clear()
        try:
            view = memoryview(line)
            while view:
                written = os.write(active.fd, view)
                view = view[written:]
            if self.fsync is FsyncPolicy.ALWAYS:
                _timed_fsync(active.fd, self.stats.fsync_seconds)
                self.stats.fsyncs += 1
        except OSError as exc:
            raise self._fail(
                LogWriteError(f"writing {active.path} failed: {exc.strerror or exc}; stopping")
            ) from exc
        active.dirty = self.fsync is not FsyncPolicy.ALWAYS

    def _fail(self, error: LogWriteError) -> LogWriteError:
        """Record the first failure (the writer is unusable from now on) and return it."""
        if self._error is None:
            self._error = error
            if self._on_error is not None:
                self._on_error(error)
        return self._error

    def _rotate(self, active: _Active) -> _Active:
        if self._deferred:
            self._write(active, b"")  # deferred lines belong to the segment being closed
        path = active.path.with_name(segment_name(self.next_seq))
        try:
            with active.lock:
                _timed_fsync(active.fd, self.stats.fsync_seconds)
                os.close(active.fd)
                active.fd = -1
            _create_segment(path)
            fd = os.open(path, _O_APPEND)
        except OSError as exc:
            self._active = None
            raise self._fail(
                LogWriteError(f"rolling to {path.name} failed: {exc.strerror or exc}; stopping")
            ) from exc
        self.stats.rotations += 1
        self._active = _Active(path, fd, 0, time.time())
        log.debug("rolled to segment %s", path.name)
        return self._active

    def sync(self) -> None:
        """Fsync the active segment if anything appended is unsynced.

        When it returns, every line written before the call is on stable
        storage (a rolled segment was fsynced when it was closed); deferred
        lines once :meth:`flush` wrote them. Safe to
        call from another thread (``await asyncio.to_thread(writer.sync)``), as
        the fsync thread does; it waits for an fsync already in progress.

        Raises:
            LogWriteError: this fsync, or an earlier write or fsync, failed.

        """
        active = self._active
        if active is not None:
            with active.lock:
                # dirty is checked under the lock: an fsync in progress in the
                # other thread may have cleared it before reaching the disk.
                if active.fd >= 0 and active.dirty:
                    active.dirty = False
                    try:
                        _timed_fsync(active.fd, self.stats.fsync_seconds)
                    except OSError as exc:
                        self._fail(
                            LogWriteError(f"fsync of {active.path} failed: {exc.strerror or exc}; stopping")
                        )
                    else:
                        self.stats.fsyncs += 1
        if self._error is not None:
            raise self._error

    def _fsync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval):
            if self._error is not None:
                return
            try:
                self.sync()
            except LogWriteError:
                return  # reported through on_error; the next append raises it

    def close(self) -> None:
        """Fsync and close the active segment, stop the fsync thread, release the lock.

        Raises:
            LogWriteError: the final fsync failed (the lock is released anyway).

        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._deferred and self._error is None and self._active is not None:
            try:
                self._write(self._active, b"")
            except LogWriteError:
                pass  # recorded in self._error, raised below
        active, self._active = self._active, None
        try:
            if active is not None and active.fd >= 0:
                try:
                    if self._error is None:
                        os.fsync(active.fd)
                except OSError as exc:
                    self._fail(LogWriteError(f"fsync of {active.path} failed: {exc.strerror or exc}"))
                try:
                    os.close(active.fd)
                except OSError as exc:
                    self._fail(LogWriteError(f"closing {active.path} failed: {exc.strerror or exc}"))
        finally:
            self._lock.release()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _create_segment(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
