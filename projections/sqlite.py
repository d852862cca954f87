"""The SQLite ``user_texts`` table: schema, position, catch-up and atomic rebuild.

The database is a disposable function of the log. Guarantees:

* the position (seq of the last applied line) is stored in the same
  transaction as the rows it produced and changed, and the fold's state
  (per open connection: user id, typed-turn counts; the aliases), so a crash
  at any moment leaves a consistent table and re-running never duplicates a row;
* the store is the fold's :class:`~projections.rule.TableView`: it
  reads the rows and aliases a batch touches, by key, one query each;
* every write transaction first checks that the stored position is the one
  the batch was folded from, so two projectors (the live one and ``capture
  project``) never interleave batches: the loser reloads and re-reads;
* WAL mode: readers never block the projector and never see a partial batch;
* :func:`rebuild` builds a whole new file, then swaps it in atomically;
* the schema is versioned: an older database is migrated when a migration
  exists, otherwise the user is told to run ``capture rebuild``.

"""

from __future__ import annotations

import gc
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from ingest.errors import CaptureError, ProjectionError
from ingest.log.envelope import LineError, decode_line
from ingest.log.lock import fsync_dir
from ingest.log.reader import last_seq_of, open_segment
from ingest.log.segments import first_seq_of, list_segments
from ingest.log.writer import events_dir
from projections.log_scan import LineItem, Position, ScanStats, scan
from projections.read_ahead import scan_ahead, worth_reading_ahead
from projections.rule import COLUMNS, FoldResult, FoldState, Gap, SkipReason, TypedCounts, UserTextRow, fold


__all__ = [
    "DEFAULT_DB_NAME",
    "SCHEMA_VERSION",
    "ProjectReport",
    "Progress",
    "UserTextStore",
    "default_db_path",
    "iter_rows",
    "log_last_seq",
    "project",
    "projection_status",
    "rebuild",
]

DEFAULT_DB_NAME = "whatsapp_storage.db"
# 2: one row per user turn over every source (sources merged, ids = first
# sighting's place, new keys and metadata); version-1 rows cannot be converted.
SCHEMA_VERSION = 2

#: Called after each committed batch with the seq of the last applied line.
Progress = Callable[[int], None]


_OUR_TABLES = frozenset(
    {
        "user_texts",
        "projection_state",
        "projection_users",
        "projection_typed",
        "projection_aliases",
        "projection_gaps",
        "projection_invalid_lines",
    }
)

_SCHEMA = (
    """CREATE TABLE user_texts (
        id INTEGER PRIMARY KEY,
        dedup_key TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        session_id TEXT,
        user_id TEXT NOT NULL,
        text TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        metadata TEXT NOT NULL,
        sources TEXT NOT NULL,
        seq INTEGER NOT NULL
    )""",
    """CREATE TABLE projection_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        schema_version INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        lines INTEGER NOT NULL,
        rows INTEGER NOT NULL,
        skipped TEXT NOT NULL,
        updated_at TEXT
    )""",
    # The fold's per-connection state (FoldState), for open connections only.
    "CREATE TABLE projection_users (connection_id TEXT PRIMARY KEY, user_id TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE projection_typed (
        scope TEXT PRIMARY KEY,  -- JSON [connection id, conversation id, normalised text]
        connection_id TEXT,
        n INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX projection_typed_connection ON projection_typed (connection_id)",
    # Spoken keys that name a typed turn (the user_texts rule's aliases).
    "CREATE TABLE projection_aliases (alias_key TEXT PRIMARY KEY, key TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE projection_gaps (
        after_seq INTEGER NOT NULL,
        next_seq INTEGER NOT NULL,
        PRIMARY KEY (after_seq, next_seq)
    ) WITHOUT ROWID""",
    # Where each invalid line is (segment by its first seq, so compressing it
    # keeps the key; byte offset), so a re-read never counts it twice.
    """CREATE TABLE projection_invalid_lines (
        segment_first_seq INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        PRIMARY KEY (segment_first_seq, offset)
    ) WITHOUT ROWID""",
)

# For readers; a rebuild creates them after the bulk load, which is faster.
_INDEXES = (
    "CREATE INDEX IF NOT EXISTS user_texts_session ON user_texts (session_id, seq)",
    "CREATE INDEX IF NOT EXISTS user_texts_timestamp ON user_texts (timestamp)",
)

# From-version -> statements that bring a database to the next version. A
# change that SQL cannot express gets no entry: users are told to rebuild.
_MIGRATIONS: dict[int, tuple[str, ...]] = {}

_INSERT_ROW = f"INSERT INTO user_texts ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
# A row's id is fixed by the fold: a changed row replaces the stored one with the same id.
_REPLACE_ROW = "INSERT OR REPLACE" + _INSERT_ROW[len("INSERT") :]
# The keys (a JSON array) drive the loop: CROSS JOIN keeps them outer, one index probe each,
# which costs a fraction of `dedup_key IN (SELECT value FROM json_each(?))`.
_SELECT_ROWS = (
    f"SELECT {', '.join('t.' + c for c in COLUMNS)}"
    " FROM json_each(?) AS k CROSS JOIN user_texts AS t ON t.dedup_key = k.value"
)
_SELECT_ALIASES = (
    "SELECT a.alias_key, a.key FROM json_each(?) AS k CROSS JOIN projection_aliases AS a"
    " ON a.alias_key = k.value"
)

_REBUILD_CACHE_KIB = 16 << 10  # 16 MiB (SQLite's default is 2 MiB)

# Long enough to wait out a rebuild's final copy; the live projector treats a
# timeout as "try again later".
_BUSY_TIMEOUT = 30.0
_WAL_SIZE_LIMIT = 64 << 20


def default_db_path(data_dir: Path) -> Path:
    """Return ``<data dir>/whatsapp_storage.db``."""
    return data_dir / DEFAULT_DB_NAME


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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

    @property
    def lines_per_second(self) -> float:
        return self.lines_read / self.elapsed if self.elapsed > 0 else 0.0


def _error(db_path: Path, exc: sqlite3.Error) -> ProjectionError:
    return ProjectionError(f"{db_path}: {exc}")


class UserTextStore:
    """An open ``user_texts`` database.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    Not thread-safe.
    """

    def __init__(self, db_path: Path, conn: sqlite3.Connection) -> None:
        self.db_path = db_path
        self._conn = conn
        self.state = FoldState()
        self.reload()

    @classmethod
    def open(cls, db_path: Path, *, busy_timeout: float = _BUSY_TIMEOUT) -> UserTextStore:
        """Open (creating if needed) the database at ``db_path`` in WAL mode.

        Raises:
            ProjectionError: the file is not a usable database, holds an
                unrelated ``user_texts`` table, or was built by another
                schema version that cannot be migrated (the message says to
                run ``capture rebuild``).

        """
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(db_path, timeout=busy_timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ProjectionError(f"cannot open {db_path}: {exc}") from exc
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives a process crash; a power cut may
            # drop the last commits, and the stored position drops with them.
            conn.execute("PRAGMA synchronous=NORMAL")
            # After a rebuild's copy the WAL is as big as the table; trim it back.
            conn.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
            _ensure_schema(conn, db_path)
            return cls(db_path, conn)
        except sqlite3.Error as exc:
            conn.close()
            raise _error(db_path, exc) from exc
        except BaseException:
            conn.close()
            raise

    def reload(self) -> None:
        """Re-read the position and the fold state from the database."""
        try:
            row = self._conn.execute("SELECT last_seq FROM projection_state WHERE id = 1").fetchone()
            users = dict(self._conn.execute("SELECT connection_id, user_id FROM projection_users"))
            typed: TypedCounts = {}
            for scope, n in self._conn.execute("SELECT scope, n FROM projection_typed"):
                connection_id, conversation_id, text = orjson.loads(scope)
                typed.setdefault(connection_id, {})[(conversation_id, text)] = n
        except sqlite3.Error as exc:
            raise _error(self.db_path, exc) from exc
        self.state = FoldState(int(row[0]), users, typed)

    def rows(self, keys: Collection[str]) -> Mapping[str, UserTextRow]:
        """Return the stored rows whose ``dedup_key`` is one of ``keys`` (the fold's :class:`TableView`)."""
        if not keys:
            return {}
        try:
            found = self._conn.execute(_SELECT_ROWS, (orjson.dumps(list(keys)),)).fetchall()
        except sqlite3.Error as exc:
            raise _error(self.db_path, exc) from exc
        return {row[1]: UserTextRow(*row) for row in found}

    def aliases(self, keys: Collection[str]) -> Mapping[str, str]:
        """Return the stored aliases among ``keys`` (the fold's :class:`TableView`)."""
        try:
            return dict(self._conn.execute(_SELECT_ALIASES, (orjson.dumps(list(keys)),)))
        except sqlite3.Error as exc:
            raise _error(self.db_path, exc) from exc

    @property
    def last_seq(self) -> int:
        return self.state.last_seq

    def apply(self, result: FoldResult, from_seq: int, invalid: Sequence[Position] = ()) -> int | None:
        """Store one folded batch and its position in one transaction.

        Args:
            result: What :func:`~projections.rule.fold` returned; its
                ``skipped`` counts are completed with ``duplicate_turn`` and
                ``invalid_line``.
            from_seq: The position the batch was folded from.
            invalid: Where the invalid lines read with the batch are; each is
                counted once, however often it is read.

        The batch must have been folded against this table at ``from_seq``
        (its rows and aliases, as :meth:`rows` and :meth:`aliases` read them).

        Returns:
            How many rows the table gained (new turns less rows merged into
            others), or ``None`` if the stored position is no longer
            ``from_seq`` (another projector moved it): nothing was written,
            :meth:`reload` and read again.

        Raises:
            ProjectionError: the database cannot be written.

        """
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                stored, skipped_text, rows_total, lines_total = conn.execute(
                    "SELECT last_seq, skipped, rows, lines FROM projection_state WHERE id = 1"
                ).fetchone()
                if stored != from_seq:
                    conn.execute("ROLLBACK")
                    return None
                if result.deleted:
                    conn.executemany("DELETE FROM user_texts WHERE id = ?", [(i,) for i in result.deleted])
                if result.updated:
                    conn.executemany(_REPLACE_ROW, map(tuple, result.updated))
                conn.executemany(_INSERT_ROW, map(tuple, result.rows))  # plain tuples bind faster
                inserted = result.inserted - result.merged
                if result.aliases:
                    conn.executemany(
                        "INSERT OR IGNORE INTO projection_aliases (alias_key, key) VALUES (?, ?)",
                        result.aliases.items(),
                    )
                _store_connections(conn, result)
                if invalid:
                    before = conn.total_changes
                    conn.executemany(
                        "INSERT OR IGNORE INTO projection_invalid_lines (segment_first_seq, offset)"
                        " VALUES (?, ?)",
                        invalid,
                    )
                    if conn.total_changes > before:
                        result.skipped[SkipReason.INVALID_LINE] += conn.total_changes - before
                if result.gaps:
                    conn.executemany(
                        "INSERT OR IGNORE INTO projection_gaps (after_seq, next_seq) VALUES (?, ?)",
                        [(gap.after_seq, gap.next_seq) for gap in result.gaps],
                    )
                skipped = Counter(orjson.loads(skipped_text))
                skipped.update(result.skipped)
                conn.execute(
                    "UPDATE projection_state"
                    " SET last_seq = ?, lines = ?, rows = ?, skipped = ?, updated_at = ? WHERE id = 1",
                    (
                        result.last_seq,
                        lines_total + result.lines,
                        rows_total + inserted,
                        orjson.dumps({str(k): v for k, v in sorted(skipped.items())}).decode(),
                        _now(),
                    ),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _error(self.db_path, exc) from exc
        return inserted

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()

    def __enter__(self) -> UserTextStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _store_connections(conn: sqlite3.Connection, result: FoldResult) -> None:
    """Write what the batch changed of the fold's per-connection state."""
    if result.user_ids:
        conn.executemany(
            "DELETE FROM projection_users WHERE connection_id = ?",
            [(c,) for c, user_id in result.user_ids.items() if user_id is None],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO projection_users (connection_id, user_id) VALUES (?, ?)",
            [(c, user_id) for c, user_id in result.user_ids.items() if user_id is not None],
        )
    if result.closed:
        conn.executemany(
            "DELETE FROM projection_typed WHERE connection_id = ?", [(c,) for c in result.closed]
        )
    if result.typed:
        conn.executemany(
            "INSERT OR REPLACE INTO projection_typed (scope, connection_id, n) VALUES (?, ?, ?)",
            [
                (orjson.dumps([connection_id, *scope]).decode(), connection_id, n)
                for connection_id, counts in result.typed.items()
                for scope, n in counts.items()
            ],
        )


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _ensure_schema(conn: sqlite3.Connection, db_path: Path, *, indexes: bool = True) -> None:
    """Create the schema in an empty database, or check and migrate an existing one."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        tables = _tables(conn)
        if "projection_state" not in tables:
            if "user_texts" in tables:
                raise ProjectionError(
                    f"{db_path} holds a user_texts table that capture did not create; "
                    "move it away or pass another --db"
                )
            for statement in _SCHEMA + (_INDEXES if indexes else ()):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO projection_state"
                " (id, schema_version, last_seq, lines, rows, skipped, updated_at)"
                " VALUES (1, ?, 0, 0, 0, '{}', ?)",
                (SCHEMA_VERSION, _now()),
            )
        else:
            version = int(
                conn.execute("SELECT schema_version FROM projection_state WHERE id = 1").fetchone()[0]
            )
            if version > SCHEMA_VERSION:
                raise ProjectionError(
                    f"{db_path} was built by a newer capture (schema {version}, this one knows "
                    f"{SCHEMA_VERSION}); upgrade capture, or run `capture rebuild` to rebuild it from the log"
                )
            while version < SCHEMA_VERSION:
                steps = _MIGRATIONS.get(version)
                if steps is None:
                    raise ProjectionError(
                        f"{db_path} was built by an older capture (schema {version}, now "
                        f"{SCHEMA_VERSION}); run `capture rebuild` to rebuild it from the log"
                    )
                for statement in steps:
                    conn.execute(statement)
                version += 1
                conn.execute("UPDATE projection_state SET schema_version = ? WHERE id = 1", (version,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    # Reading a log allocates millions of short-lived dicts and no cycles:
    # the cyclic collector's passes over them are pure overhead (about 10%).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _catch_up(
    store: UserTextStore,
    folder: Path,
    report: ProjectReport,
    *,
    batch_lines: int,
    progress: Progress | None,
    read_ahead: bool | None,
) -> None:
    """Apply every line of the log after the store's position, batch by batch.

    ``read_ahead``: read and classify in a second process (:mod:`.read_ahead`);
    ``None`` decides by the cores and the amount to read.
    """
    if read_ahead is None:
        read_ahead = worth_reading_ahead(folder, store.last_seq)
    with _cyclic_gc_paused():
        _apply_log(store, folder, report, batch_lines=batch_lines, progress=progress, read_ahead=read_ahead)


def _apply_log(
    store: UserTextStore,
    folder: Path,
    report: ProjectReport,
    *,
    batch_lines: int,
    progress: Progress | None,
    read_ahead: bool,
) -> None:
    while True:
        stats = ScanStats()
        lines = (scan_ahead if read_ahead else scan)(folder, store.last_seq, stats)
        with closing(lines):  # stops a read-ahead process when another projector moved first
            moved = _apply_scanned(store, lines, stats, report, batch_lines=batch_lines, progress=progress)
        if not moved:
            report.partial_tail = stats.partial_tail
            report.last_seq = store.last_seq
            return
        store.reload()


def _apply_scanned(
    store: UserTextStore,
    lines: Iterator[LineItem],
    stats: ScanStats,
    report: ProjectReport,
    *,
    batch_lines: int,
    progress: Progress | None,
) -> bool:
    """Fold and store ``lines`` batch by batch; ``True`` if another projector moved the position first."""
    invalid_seen = 0
    while True:
        from_seq = store.last_seq
        # Folded in place: a refused batch is undone by reload().
        result = fold(store.state, islice(lines, batch_lines), store)
        invalid = stats.invalid[invalid_seen:]
        if result.lines == 0 and not result.skipped and not invalid:
            return False
        inserted = store.apply(result, from_seq, invalid)
        if inserted is None:
            return True
        invalid_seen = len(stats.invalid)
        report.lines_read += result.lines
        report.rows_written += inserted
        report.skipped.update(result.skipped)
        report.gaps.extend(result.gaps)
        if progress is not None:
            progress(store.last_seq)


def project(
    data_dir: Path,
    db_path: Path | None = None,
    *,
    batch_lines: int = 10_000,
    progress: Progress | None = None,
    read_ahead: bool | None = None,
) -> ProjectReport:
    """Bring the table up to date with the log, from the stored position.

    Safe to run at any time, also while ``capture ingest`` (and its live
    projection) runs, and after a crash: it resumes where the last committed
    batch ended. Memory stays flat: the log is streamed, ``batch_lines`` at a
    time. ``read_ahead``: classify lines in a second process
    (:mod:`projections.read_ahead`); by default when there are two cores and
    much to read.

    Raises:
        ProjectionError: the database cannot be opened or written.
        LogError: a segment cannot be read.

    """
    db_path = db_path or default_db_path(data_dir)
    started = time.perf_counter()
    report = ProjectReport(db_path)
    with UserTextStore.open(db_path) as store:
        _catch_up(
            store,
            events_dir(data_dir),
            report,
            batch_lines=batch_lines,
            progress=progress,
            read_ahead=read_ahead,
        )
    report.elapsed = time.perf_counter() - started
    return report


def _scratch_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".rebuild")


def _page_size(db_path: Path) -> int | None:
    if not db_path.exists():
        return None
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT)
        try:
            tables = _tables(conn)
            foreign = sorted(tables - _OUR_TABLES - {"sqlite_sequence", "sqlite_stat1"})
            if foreign:
                raise ProjectionError(
                    f"{db_path} also holds tables capture did not create ({', '.join(foreign)}); "
                    "a rebuild replaces the whole file, so move them away or pass another --db"
                )
            return int(conn.execute("PRAGMA page_size").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _error(db_path, exc) from exc


def _open_scratch(path: Path, page_size: int | None) -> sqlite3.Connection:
    """Open the scratch file of a rebuild, exclusively, emptied of a killed rebuild's leftovers.

    A rebuild killed mid-write leaves a scratch file that may not even be a
    database (it has no journal): such a file is deleted and started afresh.

    """
    try:
        return _open_scratch_once(path, page_size)
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.OperationalError):
            raise _error(path, exc) from exc
    _remove_scratch(path)
    try:
        return _open_scratch_once(path, page_size)
    except sqlite3.DatabaseError as exc:
        raise _error(path, exc) from exc


def _remove_scratch(path: Path, *, keep: bool = False) -> None:
    """Delete a rebuild's scratch database and its journal files (all but the database if ``keep``)."""
    for suffix in ("-journal", "-wal", "-shm") if keep else ("", "-journal", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _open_scratch_once(path: Path, page_size: int | None) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, timeout=0.5, isolation_level=None)
    except sqlite3.Error as exc:
        raise _error(path, exc) from exc
    try:
        # Held until close: a second rebuild fails here instead of sharing the file.
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        # A scratch file: if we are killed it is thrown away, so no journal, no fsync.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        # The dedup_key index takes each new key at a random place: a larger
        # page cache (fixed, so memory stays flat) saves rereading its pages.
        conn.execute(f"PRAGMA cache_size=-{_REBUILD_CACHE_KIB}")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("COMMIT")
        if page_size is not None:
            # The backup API into a WAL database needs equal page sizes.
            conn.execute(f"PRAGMA page_size={page_size}")
        stale = _tables(conn)
        if stale:
            for name in stale:
                conn.execute(f'DROP TABLE IF EXISTS "{name}"')
            conn.execute("VACUUM")
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        if "locked" in str(exc):
            raise ProjectionError(f"another `capture rebuild` is writing {path}; wait for it") from exc
        raise
    except BaseException:
        conn.close()
        raise


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def _swap_in(scratch: Path, db_path: Path) -> str:
    """Put the finished scratch file in place of ``db_path`` atomically; return how."""
    if not db_path.exists():
        # SQLite pairs -wal/-shm files with a database by name only: a stale pair
        # left by a deleted database would be replayed into the new one.
        for suffix in ("-wal", "-shm"):
            db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)
        os.replace(scratch, db_path)
        fsync_dir(db_path.parent)
        return "renamed"
    # The file is in use (live projection, readers): renaming over it would pair
    # their -wal/-shm files with the new database, and Windows refuses to
    # replace an open file. SQLite's backup API instead writes the new pages
    # into the live file in one transaction: readers see the old table or the
    # new one, never a mix.
    try:
        source = sqlite3.connect(f"{scratch.resolve().as_uri()}?mode=ro", uri=True)
        target = sqlite3.connect(db_path, timeout=_BUSY_TIMEOUT, isolation_level=None)
        try:
            target.execute("PRAGMA synchronous=FULL")
            source.backup(target)
            # PASSIVE: a long reader must not stall the rebuild; the WAL is
            # folded back later and trimmed to journal_size_limit.
            target.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            source.close()
            target.close()
    except sqlite3.Error as exc:
        raise ProjectionError(f"cannot swap the rebuilt table into {db_path}: {exc}") from exc
    _remove_scratch(scratch)
    fsync_dir(db_path.parent)
    return "copied"


def rebuild(
    data_dir: Path,
    db_path: Path | None = None,
    *,
    batch_lines: int = 20_000,
    progress: Progress | None = None,
    read_ahead: bool | None = None,
) -> ProjectReport:
    """Rebuild the table from the whole log into a new file, then swap it in.

    Readers of the old file never see a half-built table; a kill at any moment
    leaves the old database untouched (a killed rebuild's scratch file
    ``<db>.rebuild`` is reused by the next one; a failed rebuild removes it).
    Memory stays flat.
    ``read_ahead`` as for :func:`project`. Lines appended while the rebuild
    runs are applied by the live projection or the next ``capture project``.

    Raises:
        ProjectionError: the database holds tables capture did not create,
            another rebuild is running, or a file cannot be written.
        LogError: a segment cannot be read.

    """
    db_path = db_path or default_db_path(data_dir)
    started = time.perf_counter()
    report = ProjectReport(db_path)
    page_size = _page_size(db_path)
    scratch = _scratch_path(db_path)
    conn = _open_scratch(scratch, page_size)
    built = False
    try:
        try:
            _ensure_schema(conn, scratch, indexes=False)
        except sqlite3.Error as exc:
            raise _error(scratch, exc) from exc
        store = UserTextStore(scratch, conn)
        folder = events_dir(data_dir)
        _catch_up(store, folder, report, batch_lines=batch_lines, progress=progress, read_ahead=read_ahead)
        try:
            for statement in _INDEXES:
                conn.execute(statement)
            # The file's header says WAL from its first open on; with exclusive
            # locking no -shm is made, and closing folds the -wal back in.
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            raise _error(scratch, exc) from exc
        built = True
    finally:
        conn.close()
        # A failed rebuild (a full disk, an unreadable segment) gives the
        # space back at once; only a killed one leaves the file for the next.
        _remove_scratch(scratch, keep=built)
    _fsync_file(scratch)
    report.swap = _swap_in(scratch, db_path)
    report.elapsed = time.perf_counter() - started
    return report


def log_last_seq(data_dir: Path) -> int | None:
    """Return the seq of the log's last complete line, or ``None`` for an empty log.

    Reads only the tail of the active segment (a compressed last segment is
    read whole).
    """
    for path in reversed(list_segments(events_dir(data_dir))):
        seq = _tail_seq(path)
        if seq is not None:
            return seq
    return None


def _tail_seq(path: Path) -> int | None:
    if path.suffix != ".jsonl":
        last = last_seq_of(path)
        return last if last >= (first_seq_of(path) or 1) else None
    chunk = 1 << 20
    with open_segment(path) as f:
        end = f.seek(0, os.SEEK_END)
        start = end
        data = b""
        while start > 0:
            start = max(0, start - chunk)
            f.seek(start)
            data = f.read(end - start)
            lines = data.split(b"\n")
            # lines[-1] is the bytes after the last newline (a write in progress);
            # lines[0] may be cut by the window unless the window starts the file.
            complete = lines[:-1] if start == 0 else lines[1:-1]
            for raw in reversed(complete):
                try:
                    return decode_line(raw).seq
                except LineError:
                    continue
            chunk *= 4
    return None


def projection_status(data_dir: Path, db_path: Path | None = None) -> dict[str, Any]:
    """Describe the ``user_texts`` projection for ``capture status``; never raises.

    Returns:
        ``db``, ``exists``, ``last_projected_seq``, ``rows``, ``log_last_seq``,
        ``lag_lines`` (lines in the log not yet projected), ``skipped`` (per
        reason), ``gaps`` and ``updated_at``; ``error`` instead of the
        database fields when it cannot be read.

    """
    db_path = db_path or default_db_path(data_dir)
    status: dict[str, Any] = {"db": str(db_path), "exists": db_path.exists()}
    try:
        log_seq = log_last_seq(data_dir)
    except (OSError, CaptureError) as exc:
        log_seq = None
        status["log_error"] = str(exc)
    status["log_last_seq"] = log_seq
    if not status["exists"]:
        status["lag_lines"] = log_seq or 0
        return status
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
        try:
            row = conn.execute(
                "SELECT schema_version, last_seq, rows, skipped, updated_at"
                " FROM projection_state WHERE id = 1"
            ).fetchone()
            gaps = conn.execute("SELECT count(*) FROM projection_gaps").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        status["error"] = str(exc)
        return status
    version, last_seq, rows, skipped, updated_at = row
    status.update(
        schema_version=version,
        last_projected_seq=last_seq,
        rows=rows,
        lag_lines=max(0, (log_seq or 0) - last_seq),
        skipped=orjson.loads(skipped),
        gaps=gaps,
        updated_at=updated_at,
    )
    return status


def iter_rows(db_path: Path) -> Iterator[tuple[Any, ...]]:
    """Yield the table's rows (:data:`~projections.rule.COLUMNS`) in id order."""
    try:
        conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT)
        try:
            yield from conn.execute(f"SELECT {', '.join(COLUMNS)} FROM user_texts ORDER BY id")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _error(db_path, exc) from exc
