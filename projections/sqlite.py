"""The SQLite store of the ``user_texts`` table: schema, position in the same transaction, atomic rebuild.

:class:`UserTextStore` is a :class:`~projections.store.Store`: the runner
(:mod:`projections.runner`) folds the log into it. The database is a
disposable function of the log. Guarantees:

* the position (seq of the last applied line) is stored in the same
  transaction as the rows it produced and changed, and the fold's state
  (per open connection: user id, typed-turn counts; the aliases), so a crash
  at any moment leaves a consistent table and re-running never duplicates a row;
* the store is the fold's :class:`~projections.rule.TableView`: it
  reads the rows and aliases a batch touches, by key, one query each;
* every write transaction first checks that the stored position is the one
  the batch was folded from, and that the file is still the one opened, so two
  projectors (the live one and ``capture project``) never interleave batches,
  and none writes on in a file a rebuild renamed over: the loser reloads and re-reads;
* WAL mode: readers never block the projector and never see a partial batch;
* :func:`rebuild_into` builds a whole new file, then swaps it in atomically;
* the schema is versioned: a database of another version is refused with
  "run ``capture rebuild``".

"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from ingest.errors import CaptureError, ProjectionError
from ingest.log.lock import fsync_dir
from ingest.log.reader import damaged_line
from ingest.log.segments import segment_name
from ingest.log.writer import events_dir
from projections.reader import Anchor, Position, anchor_problem, log_last_seq
from projections.rule import COLUMNS, FoldResult, FoldState, Gap, SkipReason, TypedCounts, UserTextRow


__all__ = [
    "DEFAULT_DB_NAME",
    "SCHEMA_VERSION",
    "STATUS_SHOWN",
    "UserTextStore",
    "default_db_path",
    "iter_rows",
    "projection_status",
    "rebuild_into",
]

DEFAULT_DB_NAME = "whatsapp_storage.db"
# 2: one row per user turn over every source (sources merged, ids = first
# sighting's place, new keys and metadata); version-1 rows cannot be converted.
# 3: the position's anchor (projection_state.anchor_*): what identifies the
# last applied line, so that a log that moved under the table is noticed.
SCHEMA_VERSION = 3

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
        updated_at TEXT,
        -- The anchor of last_seq (projections.reader.Anchor): its segment's first
        -- seq, the byte offset past its newline, the CRC-32 of its bytes.
        anchor_segment INTEGER,
        anchor_end INTEGER,
        anchor_crc INTEGER
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


def _error(db_path: Path, exc: sqlite3.Error) -> ProjectionError:
    return ProjectionError(f"{db_path}: {exc}")


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _connect(db_path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open the database at ``db_path`` in WAL mode, creating it and its schema if needed."""
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
        return conn
    except sqlite3.Error as exc:
        conn.close()
        raise _error(db_path, exc) from exc
    except BaseException:
        conn.close()
        raise


class UserTextStore:
    """An open ``user_texts`` database: a :class:`~projections.store.Store`.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    Not thread-safe.
    """

    def __init__(
        self, db_path: Path, conn: sqlite3.Connection, *, busy_timeout: float = _BUSY_TIMEOUT
    ) -> None:
        self.db_path = db_path
        self._conn = conn
        self._busy_timeout = busy_timeout
        self._identity = _file_identity(db_path)
        self.state = FoldState()
        self.reload()

    @classmethod
    def open(cls, db_path: Path, *, busy_timeout: float = _BUSY_TIMEOUT) -> UserTextStore:
        """Open (creating if needed) the database at ``db_path`` in WAL mode.

        Raises:
            ProjectionError: the file is not a usable database, holds an
                unrelated ``user_texts`` table, or was built by another
                schema version (the message says to run ``capture rebuild``).

        """
        return cls(db_path, _connect(db_path, busy_timeout), busy_timeout=busy_timeout)

    def _replaced(self) -> bool:
        """Whether the file at ``db_path`` is no longer the one opened (a rebuild renamed a new one over it)."""
        return _file_identity(self.db_path) != self._identity

    def reload(self) -> None:
        """Re-read the position and the fold state; reopen first if the file was replaced."""
        if self._replaced():
            self._conn.close()
            self._conn = _connect(self.db_path, self._busy_timeout)
            self._identity = _file_identity(self.db_path)
        try:
            row = self._conn.execute(
                "SELECT last_seq, anchor_segment, anchor_end, anchor_crc FROM projection_state WHERE id = 1"
            ).fetchone()
            self._has_aliases = (
                self._conn.execute("SELECT 1 FROM projection_aliases LIMIT 1").fetchone() is not None
            )
            users = dict(self._conn.execute("SELECT connection_id, user_id FROM projection_users"))
            typed: TypedCounts = {}
            for scope, n in self._conn.execute("SELECT scope, n FROM projection_typed"):
                connection_id, conversation_id, text = orjson.loads(scope)
                typed.setdefault(connection_id, {})[(conversation_id, text)] = n
        except sqlite3.Error as exc:
            raise _error(self.db_path, exc) from exc
        self.state = FoldState(int(row[0]), users, typed)
        self._anchor = _anchor(row)

    def is_busy(self, error: ProjectionError) -> bool:
        """Whether ``error`` only means another connection held the write lock past the busy timeout."""
        cause = error.__cause__
        return isinstance(cause, sqlite3.OperationalError) and "locked" in str(cause)

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
        if not self._has_aliases:
            # Most logs have none (no typed REST/webhook entry with an id). Another
            # projector adding some moves the position too, so the batch is refused.
            return {}
        try:
            return dict(self._conn.execute(_SELECT_ALIASES, (orjson.dumps(list(keys)),)))
        except sqlite3.Error as exc:
            raise _error(self.db_path, exc) from exc

    @property
    def last_seq(self) -> int:
        return self.state.last_seq

    @property
    def anchor(self) -> Anchor | None:
        """The anchor stored with the position (``projection_state.anchor_*``)."""
        return self._anchor

    def apply(
        self,
        result: FoldResult,
        from_seq: int,
        invalid: Sequence[Position] = (),
        anchor: Anchor | None = None,
    ) -> int | None:
        """Store one folded batch and its position in one transaction.

        Args:
            result: What :func:`~projections.rule.fold` returned; its
                ``skipped`` counts are completed with ``duplicate_turn`` and
                ``invalid_line``.
            from_seq: The position the batch was folded from.
            invalid: Where the invalid lines read with the batch are; each is
                counted once, however often it is read.
            anchor: What identifies the line at ``result.last_seq``, stored
                with it; when the position moves without one, the stored
                anchor is cleared (and the next catch-up rebuilds).

        The batch must have been folded against this table at ``from_seq``
        (its rows and aliases, as :meth:`rows` and :meth:`aliases` read them).

        Returns:
            How many rows the table gained (new turns less rows merged into
            others), or ``None`` if the stored position is no longer
            ``from_seq`` (another projector moved it) or the file at
            ``db_path`` was replaced: nothing was written, :meth:`reload`
            and read again.

        Raises:
            ProjectionError: the database cannot be written.

        """
        if self._replaced():
            return None
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
                    self._has_aliases = True
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
                anchor = _store_anchor(conn, result.last_seq, from_seq, anchor, self._anchor)
                conn.execute("COMMIT")
                self._anchor = anchor
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


def _anchor(row: Sequence[Any]) -> Anchor | None:
    """The anchor of a ``(last_seq, anchor_segment, anchor_end, anchor_crc)`` row of ``projection_state``."""
    last_seq, segment, end, crc = row
    if segment is None or end is None or crc is None:
        return None
    return Anchor(int(last_seq), int(segment), int(end), int(crc))


def _store_anchor(
    conn: sqlite3.Connection, last_seq: int, from_seq: int, anchor: Anchor | None, stored: Anchor | None
) -> Anchor | None:
    """Write the anchor of the new position (in the caller's transaction); return the one now stored."""
    if last_seq == from_seq and (anchor is None or anchor == stored):
        return stored  # the position did not move
    if anchor is not None and anchor.seq != last_seq:
        anchor = None  # names another line than the position: no anchor rather than a wrong one
    conn.execute(
        "UPDATE projection_state SET anchor_segment = ?, anchor_end = ?, anchor_crc = ? WHERE id = 1",
        (None, None, None) if anchor is None else (anchor.segment, anchor.end, anchor.crc),
    )
    return anchor


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
    """Create the schema in an empty database, or check an existing one's version."""
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
            if version < SCHEMA_VERSION:
                raise ProjectionError(
                    f"{db_path} was built by an older capture (schema {version}, now "
                    f"{SCHEMA_VERSION}); run `capture rebuild` to rebuild it from the log"
                )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


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
    fsync_dir(db_path.parent)
    return "copied"


def rebuild_into(db_path: Path, fill: Callable[[UserTextStore], None]) -> str:
    """Build a new database with ``fill``, then swap it in for ``db_path`` atomically; return how.

    ``fill`` gets an empty store, in a scratch file ``<db>.rebuild`` built
    without journal (its secondary indexes are made at the end, which is
    faster). Readers of the old file never see a half-built table; a kill at
    any moment leaves the old database untouched (the next rebuild reuses the
    scratch file; a failed one, in its build or its swap, removes it).

    Returns:
        ``"renamed"`` (there was no old file) or ``"copied"`` (SQLite's backup
        API into the live file, one transaction).

    Raises:
        ProjectionError: the database holds tables capture did not create,
            another rebuild is running, or a file cannot be written.
        CaptureError: whatever ``fill`` raises; the old database is kept.

    """
    page_size = _page_size(db_path)
    scratch = _scratch_path(db_path)
    conn = _open_scratch(scratch, page_size)
    built = False
    try:
        try:
            _ensure_schema(conn, scratch, indexes=False)
        except sqlite3.Error as exc:
            raise _error(scratch, exc) from exc
        fill(UserTextStore(scratch, conn))
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
    try:
        _fsync_file(scratch)
        return _swap_in(scratch, db_path)
    except OSError as exc:
        raise ProjectionError(f"cannot swap the rebuilt table into {db_path}: {exc.strerror or exc}") from exc
    finally:
        _remove_scratch(scratch)  # swapped in (renamed or copied), or failed: a full disk gets its space back


#: How many gaps and damaged lines :func:`projection_status` lists.
STATUS_SHOWN = 10


def projection_status(data_dir: Path, db_path: Path | None = None) -> dict[str, Any]:
    """Describe the ``user_texts`` projection for ``capture status``; never raises.

    Returns:
        ``db``, ``exists``, ``last_projected_seq``, ``rows``, ``log_last_seq``,
        ``lag_lines`` (lines in the log not yet projected), ``skipped`` (per
        reason), ``gaps`` (how many jumps in seq the projection met) and
        ``updated_at``; ``error`` instead of the database fields when it
        cannot be read. ``problems``: one sentence per thing to look at — the
        log no longer holds the line the position names (shorter than the
        table, or another line there), the first :data:`STATUS_SHOWN` gaps in
        seq and damaged lines (seq, segment, offset) the projection met.

    """
    db_path = db_path or default_db_path(data_dir)
    status: dict[str, Any] = {"db": str(db_path), "exists": db_path.exists(), "problems": []}
    problems: list[str] = status["problems"]
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
            conn.row_factory = sqlite3.Row
            state = dict(conn.execute("SELECT * FROM projection_state WHERE id = 1").fetchone())
            gaps = conn.execute(
                "SELECT after_seq, next_seq FROM projection_gaps ORDER BY after_seq LIMIT ?", (STATUS_SHOWN,)
            ).fetchall()
            gap_count = conn.execute("SELECT count(*) FROM projection_gaps").fetchone()[0]
            invalid = conn.execute(
                "SELECT segment_first_seq, offset FROM projection_invalid_lines"
                " ORDER BY segment_first_seq, offset LIMIT ?",
                (STATUS_SHOWN,),
            ).fetchall()
            invalid_count = conn.execute("SELECT count(*) FROM projection_invalid_lines").fetchone()[0]
        finally:
            conn.close()
    except (sqlite3.Error, TypeError) as exc:
        status["error"] = str(exc)
        return status
    last_seq = state["last_seq"]
    status.update(
        schema_version=state["schema_version"],
        last_projected_seq=last_seq,
        rows=state["rows"],
        lag_lines=max(0, (log_seq or 0) - last_seq),
        skipped=orjson.loads(state["skipped"]),
        gaps=gap_count,
        updated_at=state["updated_at"],
    )
    if state["schema_version"] != SCHEMA_VERSION:
        problems.append(
            f"the table was built by another capture version (schema {state['schema_version']}, "
            f"this one {SCHEMA_VERSION}): run `capture rebuild`"
        )
        return status
    if "log_error" in status:
        problems.append(status["log_error"])
    else:
        problems.extend(_log_problems(data_dir, log_seq, state))
    problems.extend(str(Gap(after, next_seq)) for after, next_seq in gaps)
    if gap_count > len(gaps):
        problems.append(f"{gap_count - len(gaps)} more gaps in seq")
    for segment, offset in invalid:
        try:
            where = str(damaged_line(events_dir(data_dir), segment, offset))
        except CaptureError:
            where = f"{segment_name(segment)}, byte {offset:,}"
        problems.append(f"a damaged line, skipped: {where}")
    if invalid_count > len(invalid):
        problems.append(f"{invalid_count - len(invalid)} more damaged lines")
    return status


def _log_problems(data_dir: Path, log_seq: int | None, state: Mapping[str, Any]) -> list[str]:
    """What is wrong between the log and the table's position, as sentences (none if all is well)."""
    last_seq = state["last_seq"]
    fix = "the next `capture project` (or ingest) rebuilds the table, or run `capture rebuild`"
    if log_seq is not None and log_seq < last_seq or log_seq is None and last_seq > 0:
        ends = "is empty" if log_seq is None else f"ends at seq {log_seq}"
        return [f"the log {ends}, before the table's position (seq {last_seq}): {fix}"]
    anchor = _anchor((last_seq, state["anchor_segment"], state["anchor_end"], state["anchor_crc"]))
    try:
        moved = anchor_problem(events_dir(data_dir), last_seq, anchor)
    except CaptureError as exc:
        return [str(exc)]
    return [] if moved is None else [f"{moved}: {fix}"]


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
