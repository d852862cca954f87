"""The one projection loop: ``capture project``, ``capture rebuild`` and the live follower.

:func:`run` reads a batch of lines from a reader, folds it into the store's
state (:func:`projections.rule.fold`) and has the store write it with its
position; when another projector moved the position first, it reloads and
reads again from there. What differs between the three is only where the lines
come from and when to stop:

* :func:`project` and :func:`rebuild` read with :func:`~projections.reader.scan`
  (DuckDB reading ahead) until the log has no more; a rebuild folds into a new
  database (:func:`~projections.sqlite.rebuild_into`) that is swapped in at
  the end;
* :func:`follow` reads with a :class:`~projections.reader.LogTail` and waits for
  more, until told to stop.

Each batch is stored with the :class:`~projections.reader.Anchor` of its last
line. Before :func:`project` and :func:`follow` read on from a stored
position, they check that the log still holds that line
(:func:`~projections.reader.anchor_problem`): a log that moved under the table
(its end lost in a power cut and written again, a log copied over another)
would otherwise have its new lines skipped as already applied. When it does
not, they say so in one line (a warning of the ``capture.projection`` logger,
and :attr:`ProjectReport.rebuilt`) and rebuild the table from the log.

"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Protocol

from ingest.errors import ProjectionError
from ingest.log.reader import DamagedLine, damaged_line
from ingest.log.segments import check_segments
from ingest.log.writer import events_dir
from projections.reader import Anchor, LineItem, LogTail, Position, ScanStats, anchor_problem, scan
from projections.rule import Gap, fold
from projections.sqlite import UserTextStore, default_db_path, rebuild_into
from projections.store import Store


__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "LineReader",
    "ProjectReport",
    "Progress",
    "ScanReader",
    "TailReader",
    "follow",
    "project",
    "rebuild",
    "run",
]

log = logging.getLogger("capture.projection")

#: Called after each committed batch with the seq of the last applied line.
Progress = Callable[[int], None]

#: How many of the damaged lines a run met :attr:`ProjectReport.damaged` describes.
DAMAGED_SHOWN = 100

#: How often the live follower looks for new lines when it found none.
DEFAULT_POLL_INTERVAL = 0.02


@dataclass
class ProjectReport:
    """What one :func:`project` or :func:`rebuild` did.

    Attributes:
        db_path: The database written.
        lines_read: Log lines applied (valid, not duplicated).
        rows_written: Rows inserted.
        skipped: Count per :class:`~projections.rule.SkipReason` value.
        gaps: Jumps in seq seen while reading.
        last_seq: The stored position afterwards.
        partial_tail: The log ended with a line still being written (or a
            torn tail the next ``capture ingest`` will move aside).
        elapsed: Seconds taken.
        swap: For a rebuild, how the new file took the old one's place:
            ``"renamed"`` (no old file) or ``"copied"`` (SQLite's backup API
            into the live file, one transaction).
        invalid: Where the lines read that are not valid log lines (skipped) are.
        damaged: The first :data:`DAMAGED_SHOWN` of them, described.
        rebuilt: Why :func:`project` rebuilt the table instead (the log no
            longer holds the line its position named), if it did.

    """

    db_path: Path
    lines_read: int = 0
    rows_written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    gaps: list[Gap] = field(default_factory=list)
    last_seq: int = 0
    partial_tail: bool = False
    elapsed: float = 0.0
    swap: str | None = None
    invalid: list[Position] = field(default_factory=list)
    damaged: list[DamagedLine] = field(default_factory=list)
    rebuilt: str | None = None

    @property
    def lines_per_second(self) -> float:
        return self.lines_read / self.elapsed if self.elapsed > 0 else 0.0


class LineReader(Protocol):
    """Where :func:`run` reads lines from: the log, from a position on."""

    def lines(self, max_lines: int) -> Iterable[LineItem]:
        """Return the next (up to) ``max_lines`` items; the runner iterates them once, while folding."""
        ...

    def invalid(self) -> list[Position]:
        """Return, and forget, the positions of the invalid lines the items iterated so far held."""
        ...

    def seek(self, after_seq: int) -> None:
        """Read from the line after ``after_seq`` on."""
        ...

    def anchor(self, seq: int) -> Anchor | None:
        """The anchor of the line with ``seq`` if the items iterated so far ended with it (else ``None``)."""
        ...


class ScanReader:
    """A :class:`LineReader` over :func:`~projections.reader.scan`: the log as it is now, to its end."""

    def __init__(self, events_dir: Path, after_seq: int) -> None:
        self.events_dir = events_dir
        self.stats = ScanStats()
        self._seen = 0
        self._items: Generator[LineItem, None, None] | None = None
        self.seek(after_seq)

    def lines(self, max_lines: int) -> Iterable[LineItem]:
        assert self._items is not None
        return islice(self._items, max_lines)

    def invalid(self) -> list[Position]:
        found = self.stats.invalid[self._seen :]
        self._seen = len(self.stats.invalid)
        return found

    def seek(self, after_seq: int) -> None:
        self.close()
        self.stats = ScanStats()
        self._seen = 0
        self._items = scan(self.events_dir, after_seq, self.stats)

    def anchor(self, seq: int) -> Anchor | None:
        return self.stats.marks.anchor(seq)

    def close(self) -> None:
        """Stop reading (ends DuckDB's reading ahead)."""
        if self._items is not None:
            self._items.close()


class TailReader:
    """A :class:`LineReader` over a :class:`~projections.reader.LogTail`: new lines as they are appended."""

    def __init__(self, events_dir: Path, after_seq: int) -> None:
        self.tail = LogTail(events_dir, after_seq)
        self._invalid: list[Position] = []

    def lines(self, max_lines: int) -> Iterable[LineItem]:
        read = self.tail.read(max_lines)
        self._invalid.extend(read.invalid)
        return read.items

    def invalid(self) -> list[Position]:
        found, self._invalid = self._invalid, []
        return found

    def seek(self, after_seq: int) -> None:
        self._invalid = []
        self.tail.seek(after_seq)

    def anchor(self, seq: int) -> Anchor | None:
        return self.tail.marks.anchor(seq)

    def close(self) -> None:
        self.tail.close()


def run(
    store: Store,
    reader: LineReader,
    report: ProjectReport,
    *,
    batch_lines: int,
    progress: Progress | None = None,
    wait: Callable[[], bool] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> bool:
    """Fold and store the reader's lines batch by batch, from the store's position on.

    Args:
        store: Where the rows go; the reader must start at its position.
        reader: Where the lines come from.
        report: Counts what was done.
        batch_lines: Lines per batch (one transaction each); a run of lines
            the rule does not read counts as one.
        progress: Called after each stored batch.
        wait: Called when the reader has no more lines: return ``True`` to
            read again, ``False`` to stop. By default, stop.
        cancelled: Called after each batch: ``True`` stops at once (what is
            stored is consistent; the next run goes on from there).

    Returns:
        ``False`` if it stopped because ``cancelled()``, else ``True``.

    Raises:
        ProjectionError: the store cannot be written (but for a busy store
            while ``wait`` is given: read again).
        LogError: a segment cannot be read.

    """
    while True:
        if cancelled is not None and cancelled():
            return False
        from_seq = store.last_seq
        # Folded in place: a refused batch is undone by reload().
        result = fold(store.state, reader.lines(batch_lines), store)
        invalid = reader.invalid()
        if result.lines == 0 and not result.skipped and not invalid:
            if wait is not None and wait():
                continue
            return True
        anchor = reader.anchor(result.last_seq) if result.last_seq != from_seq else None
        try:
            inserted = store.apply(result, from_seq, invalid, anchor)
        except ProjectionError as exc:
            if wait is None or not store.is_busy(exc):
                raise
            inserted = None  # a rebuild's copy holds the lock: read again from the stored position
        if inserted is None:
            store.reload()
            reader.seek(store.last_seq)
            continue
        report.lines_read += result.lines
        report.rows_written += inserted
        report.skipped.update(result.skipped)
        report.gaps.extend(result.gaps)
        report.invalid.extend(invalid)
        report.last_seq = store.last_seq
        if progress is not None:
            progress(store.last_seq)


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    # Reading a log allocates millions of short-lived objects and no cycles:
    # the cyclic collector's passes over them are pure overhead (about 10%).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Cancelled(Exception):
    """A rebuild was cancelled: the scratch file is thrown away, the old table kept."""


def _position_problem(store: Store, data_dir: Path) -> str | None:
    """Check ``events/`` for junk, then say why the log no longer holds the store's position, if it does not.

    Raises:
        LogError: junk in ``events/``, or the segment holding the position cannot be read.

    """
    folder = events_dir(data_dir)
    check_segments(folder)
    return anchor_problem(folder, store.last_seq, store.anchor)


def _catch_up(
    store: Store,
    data_dir: Path,
    report: ProjectReport,
    batch_lines: int,
    progress: Progress | None,
    cancelled: Callable[[], bool] | None = None,
) -> None:
    """Apply every line of the log after the store's position (until ``cancelled()``)."""
    folder = events_dir(data_dir)
    reader = ScanReader(folder, store.last_seq)
    try:
        with _cyclic_gc_paused():
            run(store, reader, report, batch_lines=batch_lines, progress=progress, cancelled=cancelled)
    finally:
        reader.close()
    report.partial_tail = reader.stats.partial_tail
    report.last_seq = store.last_seq
    report.invalid = list(dict.fromkeys(report.invalid))  # a batch read again reads its lines again
    report.damaged = [damaged_line(folder, *where) for where in report.invalid[:DAMAGED_SHOWN]]


def project(
    data_dir: Path,
    db_path: Path | None = None,
    *,
    batch_lines: int = 10_000,
    progress: Progress | None = None,
) -> ProjectReport:
    """Bring the table up to date with the log, from the stored position.

    Safe to run at any time, also while ``capture ingest`` (and its live
    projection) runs, and after a crash: it resumes where the last committed
    batch ended. Memory stays flat: the log is streamed, ``batch_lines`` at a
    time. When the log no longer holds the line the stored position names,
    it logs one warning and rebuilds the table instead (see :func:`rebuild`);
    :attr:`ProjectReport.rebuilt` says why.

    Raises:
        ProjectionError: the database cannot be opened or written.
        LogError: a segment cannot be read, or ``events/`` holds junk named
            like a segment.

    """
    db_path = db_path or default_db_path(data_dir)
    started = time.perf_counter()
    report = ProjectReport(db_path)
    with UserTextStore.open(db_path) as store:
        moved = _position_problem(store, data_dir)
        if moved is None:
            _catch_up(store, data_dir, report, batch_lines, progress)
    if moved is not None:
        log.warning("%s; rebuilding the table from the log", moved)
        report = rebuild(data_dir, db_path, progress=progress)
        report.rebuilt = moved
    report.elapsed = time.perf_counter() - started
    return report


def rebuild(
    data_dir: Path,
    db_path: Path | None = None,
    *,
    batch_lines: int = 20_000,
    progress: Progress | None = None,
) -> ProjectReport:
    """Rebuild the table from the whole log into a new file, then swap it in.

    Readers of the old file never see a half-built table; a kill at any moment
    leaves the old database untouched (:func:`~projections.sqlite.rebuild_into`).
    Memory stays flat. Lines appended while the rebuild runs are applied by the
    live projection or the next ``capture project``.

    Raises:
        ProjectionError: the database holds tables capture did not create,
            another rebuild is running, or a file cannot be written.
        LogError: a segment cannot be read, or ``events/`` holds junk named
            like a segment.

    """
    db_path = db_path or default_db_path(data_dir)
    started = time.perf_counter()
    report = ProjectReport(db_path)
    check_segments(events_dir(data_dir))
    report.swap = rebuild_into(
        db_path, lambda store: _catch_up(store, data_dir, report, batch_lines, progress)
    )
    report.elapsed = time.perf_counter() - started
    return report


def follow(
    data_dir: Path,
    db_path: Path,
    should_stop: Callable[[], bool],
    *,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    batch_lines: int = 5_000,
    cancelled: Callable[[], bool] | None = None,
) -> bool:
    """Apply the log's new lines to the table until ``should_stop()``, then drain and return.

    Each poll reads only what was appended since the last one. When another
    projector moved the stored position (``capture project``, a rebuild's swap)
    or the file was replaced, reading restarts from the stored position. On
    start, as :func:`project`, it checks that the log still holds the line the
    stored position names, and rebuilds the table if not (one warning).

    Args:
        data_dir: The data dir whose log to follow.
        db_path: The database.
        should_stop: Polled when all is applied: ``True`` ends the run once
            what the log holds is applied.
        poll_interval: Seconds to wait when the log had nothing new.
        batch_lines: Lines per transaction.
        cancelled: Polled after every batch (and during a rebuild): ``True``
            ends the run at once, what is stored being consistent (a rebuild
            in progress is thrown away).

    Returns:
        ``True`` if it stopped with what the log held applied, ``False`` if
        ``cancelled()`` stopped it first.

    Raises:
        ProjectionError: the database cannot be opened or written.
        LogError: a segment cannot be read, or ``events/`` holds junk named
            like a segment.

    """
    stopping = False

    def wait() -> bool:
        nonlocal stopping
        if stopping:
            return False  # stop was seen before the last read found nothing: all is applied
        stopping = should_stop()
        if not stopping:
            time.sleep(poll_interval)
        return True

    def fill(scratch: Store) -> None:
        _catch_up(scratch, data_dir, ProjectReport(db_path), batch_lines, None, cancelled)
        if cancelled is not None and cancelled():
            raise _Cancelled

    with UserTextStore.open(db_path) as store:
        moved = _position_problem(store, data_dir)
        if moved is not None:
            log.warning("%s; rebuilding the table from the log", moved)
            try:
                rebuild_into(db_path, fill)
            except _Cancelled:
                return False
            store.reload()
        reader = TailReader(events_dir(data_dir), store.last_seq)
        try:
            return run(
                store,
                reader,
                ProjectReport(db_path),
                batch_lines=batch_lines,
                wait=wait,
                cancelled=cancelled,
            )
        finally:
            reader.close()
