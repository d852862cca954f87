"""DuckDB analytics views over the log's segments; all their SQL is built here.

``<data dir>/analytics.duckdb`` holds four views that read the JSONL segments
directly (DuckDB here cannot load ``sqlite_scanner``, so they read the log,
not the SQLite file):

* ``events``: one row per log line: the envelope columns, ``type`` and the
  frame as ``event`` (JSON), ``raw`` or ``raw_b64``, and the ``segment`` file;
* ``user_texts``: the same rows and columns as the SQLite table, by the same
  rule (:mod:`projections.rule`), stated in SQL;
* ``conversations``: one row per conversation: agent, first and last event
  time, duration, user and agent turns, how it ended, the sources that logged it;
* ``daily_activity``: one row per UTC day.

In ``user_texts`` and ``conversations``, ``sources`` is JSON (an array of
names, ``["agent_ws","rest"]``), as the SQLite column's text is, so that it
prints and exports the same everywhere (``json_contains(sources, '"rest"')``,
or ``sources::VARCHAR[]`` for a list).

How they stay valid:

* segments are matched by a glob at query time, so new segments (and
  segments compressed to ``.jsonl.gz`` / ``.jsonl.zst``) show up without
  recreating anything; sidecar files of torn tails are excluded by name;
* a torn or in-progress last line is skipped (``ignore_errors``), so querying
  while ``capture ingest`` appends works;
* the views name the segments by a path relative to the ``.duckdb`` file's
  folder, and :func:`open_analytics` points DuckDB's ``file_search_path`` at
  that folder, so moving the data dir keeps them working. When the layout or
  this module's SQL changed, :func:`open_analytics` recreates the views.

Where the two ``user_texts`` can differ, on logs no writer makes: the Python
projector checks the ``crc32`` of each line it reads and SQL cannot, so a line
whose frame was corrupted on disk yet still parses counts in the view only; and
the view keeps one line per seq where the fold skips any line whose seq is not
above the previous one (so an out-of-order line counts in the view only).

"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import duckdb
import orjson

from ingest.errors import ProjectionError, QueryCancelledError, QueryError, QueryRefusedError
from ingest.log.segments import check_segments
from ingest.log.writer import events_dir
from projections.rule import (
    CAPTURE,
    CLOSED_TYPE,
    DEFAULT_USER_ID,
    ENTRY_SLOTS,
    INIT_TYPE,
    LIVE_RULE_TYPES,
    MAX_EPOCH_US,
    MAX_OFFSET_SECS,
    MAX_START_SECS,
    REST,
    SPOKEN_LIVE_SOURCES,
    TRANSCRIPTION_TYPE,
    WEBHOOK,
    WHITESPACE,
    Kind,
    Medium,
)


__all__ = [
    "DEFAULT_DUCKDB_NAME",
    "VIEW_NAMES",
    "QueryResult",
    "default_duckdb_path",
    "open_analytics",
    "read_statements",
    "run_query",
    "view_statements",
    "write_parquet",
]

DEFAULT_DUCKDB_NAME = "analytics.duckdb"
VIEW_NAMES = ("events", "user_texts", "conversations", "daily_activity")

# Bump when the views change in a way the SQL text does not show (it rarely will:
# the fingerprint covers the full text).
_VIEWS_VERSION = 1
_META_TABLE = "capture_views"

# Segments only (20 digits and an extension), not the ".jsonl.torn-…" sidecars,
# which hold cut bytes whose seqs the log reuses. Exact globs rather than a
# filter on the file name: that filter cost every line a regex, about 10%
# of a scan.
_SEGMENT_GLOBS = tuple("[0-9]" * 20 + extension for extension in (".jsonl", ".jsonl.gz", ".jsonl.zst"))

_ENVELOPE_TYPES = {
    "seq": "BIGINT",
    "received_at": "TIMESTAMPTZ",
    "source": "VARCHAR",
    "direction": "VARCHAR",
    "agent_id": "VARCHAR",
    "connection_id": "VARCHAR",
    "conversation_id": "VARCHAR",
    "crc32": "UBIGINT",
    "event": "JSON",
    "raw": "VARCHAR",
    "raw_b64": "VARCHAR",
}

# What the user_texts rule reads from each line it looks at, parsed once per
# line. The frame's fields stay JSON so that their JSON type can be checked, as
# the Python rule checks isinstance; received_at stays text so the timestamp
# column is the logged string, as in SQLite.
_RULE_STRUCTURE: dict[str, object] = {
    "seq": "BIGINT",
    "received_at": "VARCHAR",
    "direction": "VARCHAR",
    "connection_id": "VARCHAR",
    "conversation_id": "VARCHAR",
    "raw": "JSON",
    "event": {
        "user_id": "JSON",
        "text": "JSON",
        "user_transcription_event": {"user_transcript": "JSON", "event_id": "JSON"},
    },
}

_NUMBER = "('BIGINT', 'UBIGINT', 'DOUBLE')"
_EVENT_ID = "('BIGINT', 'UBIGINT', 'VARCHAR')"
_SPOKEN_LIVE = "(" + ", ".join(f"'{source}'" for source in SPOKEN_LIVE_SOURCES) + ")"
_EVENT_KEY = ',"event":'


def default_duckdb_path(data_dir: Path) -> Path:
    """Return ``<data dir>/analytics.duckdb``."""
    return data_dir / DEFAULT_DUCKDB_NAME


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _struct(types: dict[str, str]) -> str:
    return "{" + ", ".join(f"{_literal(name)}: {_literal(kind)}" for name, kind in types.items()) + "}"


def _chars(text: str) -> str:
    # chr() per character: the set holds control characters that are better
    # not written raw into SQL text.
    return " || ".join(f"chr({ord(c)})" for c in text)


def _structure_literal(structure: Mapping[str, object]) -> str:
    return _literal(orjson.dumps(structure).decode())


def _string_of(json: str) -> str:
    """SQL for the value of a JSON string, else NULL (Python: ``_string``)."""
    return f"CASE WHEN json_type({json}) = 'VARCHAR' THEN {json}->>'$' END"


def _nonempty_of(json: str) -> str:
    """SQL for the value of a non-empty JSON string, else NULL (Python: ``_nonempty``)."""
    return f"CASE WHEN json_type({json}) = 'VARCHAR' AND {json}->>'$' <> '' THEN {json}->>'$' END"


def _normalized(text: str) -> str:
    """SQL for :func:`~projections.rule.normalize`."""
    spaces = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE) + "]+"
    return f"regexp_replace(trim({text}, {_chars(WHITESPACE)}), {_literal(spaces)}, ' ', 'g')"


def _digest(*parts: str) -> str:
    """SQL for :func:`projections.rule._digest` of SQL string expressions: sha256 of their JSON array."""
    return f"left(sha256(to_json([{', '.join(parts)}])::VARCHAR), 32)"


def _blank_free(text: str) -> str:
    return f"{text} IS NOT NULL AND trim({text}, {_chars(WHITESPACE)}) <> ''"


def _user_texts_view(glob: str) -> str:
    """The ``user_texts`` view: :mod:`projections.rule` stated in SQL.

    Where the Python fold merges each sighting into its row as the log goes,
    the view groups all sightings at once: a row per key (spoken keys
    resolved through the first alias), its first sighting the one with the
    smallest place ``seq * ENTRY_SLOTS + entry``.
    """
    slots = ENTRY_SLOTS
    live_types = ", ".join(
        f"('{source}', '{kind}', '{direction}')"
        for source, kinds in LIVE_RULE_TYPES.items()
        for kind, direction in kinds.items()
    )
    closed = f"source = '{CAPTURE}' AND type = '{CLOSED_TYPE}' AND connection_id IS NOT NULL"
    message, transcript = Kind.USER_MESSAGE.value, Kind.USER_TRANSCRIPT.value
    # Python: user_texts.spoken_key, for both live and REST/webhook sightings (and aliases).
    spoken_key = "'spoken:' || " + _digest("conversation_id", "(event_id->>'$')", "normal")
    return f"""CREATE OR REPLACE VIEW user_texts AS
WITH candidates AS (
    SELECT json AS line, json_extract_string(json, ['$.source', '$.event.type', '$.direction']) AS head
    FROM read_json_objects({glob}, format = 'newline_delimited',
                           ignore_errors = true, allow_empty = true)
    WHERE json IS NOT NULL
), wanted AS (
    -- The lines the rule reads (a fraction of a log).
    SELECT line, head[1] AS source, head[2] AS type, head[3] AS direction_text
    FROM candidates
    WHERE head[1] IN ('{REST}', '{WEBHOOK}')
       OR list_contains([{live_types}], (head[1], head[2], head[3]))
), parsed AS MATERIALIZED (
    -- Materialized so that each line is parsed once: DuckDB would otherwise
    -- repeat json_transform for every field read from it.
    SELECT line, source, type, json_transform(line, {_structure_literal(_RULE_STRUCTURE)}) AS j
    FROM wanted
), lines AS (
    -- One per seq: the fold skips a duplicated line.
    SELECT * FROM parsed WHERE j.seq IS NOT NULL QUALIFY row_number() OVER (PARTITION BY j.seq) = 1
), live AS (
    SELECT j.seq AS seq, j.received_at AS received_at, source, type, j.connection_id AS connection_id,
           j.conversation_id AS conversation_id, line,
           {_nonempty_of("j.event.user_id")} AS frame_user_id,
           j.event.text AS message_text,
           j.event.user_transcription_event.user_transcript AS transcript_text,
           j.event.user_transcription_event.event_id AS event_id
    FROM lines
    WHERE source NOT IN ('{REST}', '{WEBHOOK}')
), epochs AS (
    -- A connection's state is forgotten at its connection_closed record.
    SELECT *, count(*) FILTER (WHERE {closed}) OVER (
                  PARTITION BY connection_id ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
              ) AS epoch
    FROM live
), users AS (
    -- The user_id of the latest init frame sent on the same connection before each line.
    SELECT *,
           last_value(CASE WHEN type = '{INIT_TYPE}' AND connection_id IS NOT NULL THEN frame_user_id END IGNORE NULLS)
               OVER (PARTITION BY connection_id, epoch ORDER BY seq
                     ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS init_user_id
    FROM epochs
), live_turns AS (
    SELECT seq, received_at, source, connection_id, conversation_id, epoch, line,
           type = '{message}' AS typed,
           coalesce(init_user_id, frame_user_id) AS user_id,
           CASE WHEN type = '{message}' THEN {_string_of("message_text")}
                ELSE {_string_of("transcript_text")} END AS text,
           CASE WHEN type = '{transcript}' AND json_type(event_id) IN {_EVENT_ID} THEN event_id END AS event_id
    FROM users
    WHERE type IN ('{message}', '{transcript}')
), live_valid AS (
    SELECT *, {_normalized("text")} AS normal FROM live_turns WHERE {_blank_free("text")}
), live_sightings AS (
    SELECT seq, NULL::BIGINT AS entry, source, conversation_id, text, user_id, received_at AS turn_at, event_id,
           line[strpos(line, '{_EVENT_KEY}') + {len(_EVENT_KEY)} : length(line) - 1] AS raw_event,
           CASE WHEN typed THEN '{Medium.TEXT}' WHEN source IN {_SPOKEN_LIVE} THEN '{Medium.AUDIO}' END AS medium,
           CASE WHEN conversation_id IS NULL THEN 'seq:' || seq::VARCHAR
                WHEN typed THEN 'typed:' || {_digest("conversation_id", "normal", "(row_number() OVER (PARTITION BY typed, connection_id, epoch, conversation_id, normal ORDER BY seq))::VARCHAR")}
                WHEN event_id IS NOT NULL THEN {spoken_key}
                ELSE 'seq:' || seq::VARCHAR END AS key,
           NOT typed AND conversation_id IS NOT NULL AND event_id IS NOT NULL AS spoken,
           NULL::VARCHAR AS alias
    FROM live_valid
), bodies AS (
    SELECT j.seq AS seq, j.received_at AS received_at, source, j.conversation_id AS envelope_conversation_id,
           CASE WHEN json_type(line, '$.event') = 'OBJECT' THEN json_extract(line, '$.event')
                WHEN json_type(j.raw) = 'VARCHAR' AND json_valid(j.raw->>'$') THEN (j.raw->>'$')::JSON END AS body
    FROM lines
    WHERE source IN ('{REST}', '{WEBHOOK}')
), calls AS (
    SELECT seq, received_at, source, data,
           coalesce({_string_of("data->'$.conversation_id'")}, envelope_conversation_id) AS conversation_id,
           CASE WHEN json_type(data, '$.metadata.start_time_unix_secs') IN {_NUMBER}
                THEN (data->>'$.metadata.start_time_unix_secs')::DOUBLE END AS start_secs,
           coalesce({_nonempty_of("data->'$.user_id'")},
                    {_nonempty_of("data->'$.conversation_initiation_client_data.user_id'")}) AS user_id
    FROM (SELECT *, CASE WHEN source = '{REST}' THEN body
                         WHEN body->>'$.type' = '{TRANSCRIPTION_TYPE}' THEN body->'$.data' END AS data
          FROM bodies)
    WHERE json_type(data) = 'OBJECT' AND json_type(data, '$.transcript') = 'ARRAY'
), entries AS (
    SELECT * EXCLUDE (data), unnest(json_extract(data, '$.transcript[*]')) AS item,
           unnest(range(json_array_length(data, '$.transcript')::BIGINT)) AS entry
    FROM calls
), body_turns AS (
    SELECT *,
           {_string_of("item->'$.message'")} AS text,
           {_string_of("item->'$.source_medium'")} AS raw_medium,
           CASE WHEN json_type(item, '$.source_event_id') IN {_EVENT_ID} THEN item->'$.source_event_id' END AS event_id,
           CASE WHEN json_type(item, '$.time_in_call_secs') IN {_NUMBER}
                THEN (item->>'$.time_in_call_secs')::DOUBLE END AS offset_secs
    FROM entries
    WHERE entry < {slots} AND json_type(item) = 'OBJECT' AND json_type(item, '$.role') = 'VARCHAR'
      AND item->>'$.role' = 'user'
), body_valid AS (
    SELECT *, {_normalized("text")} AS normal,
           CASE WHEN raw_medium IN ('{Medium.AUDIO}', '{Medium.TEXT}') THEN raw_medium END AS medium,
           coalesce(raw_medium = '{Medium.TEXT}', false) AS typed,
           CASE WHEN start_secs BETWEEN 0 AND {MAX_START_SECS} AND offset_secs BETWEEN 0 AND {MAX_OFFSET_SECS}
                THEN floor(start_secs * 1000000 + 0.5)::BIGINT + floor(offset_secs * 1000000 + 0.5)::BIGINT
           END AS micros
    FROM body_turns
    WHERE {_blank_free("text")}
), body_sightings AS (
    SELECT seq, entry, source, conversation_id, text, user_id,
           CASE WHEN micros <= {MAX_EPOCH_US}
                THEN strftime(make_timestamp(micros), '%Y-%m-%dT%H:%M:%S.%fZ') ELSE received_at END AS turn_at,
           event_id, 'null' AS raw_event, medium,
           CASE WHEN conversation_id IS NULL THEN 'seq:' || seq::VARCHAR || ':' || entry::VARCHAR
                WHEN typed THEN 'typed:' || {_digest("conversation_id", "normal", "(row_number() OVER (PARTITION BY seq, typed, normal ORDER BY entry))::VARCHAR")}
                WHEN event_id IS NOT NULL THEN {spoken_key}
                ELSE 'entry:' || {_digest("conversation_id", "coalesce(raw_medium, '')", "normal", "(row_number() OVER (PARTITION BY seq, typed, event_id IS NULL, coalesce(raw_medium, ''), normal ORDER BY entry))::VARCHAR")}
           END AS key,
           NOT typed AND conversation_id IS NOT NULL AND event_id IS NOT NULL AS spoken,
           CASE WHEN typed AND conversation_id IS NOT NULL AND event_id IS NOT NULL
                THEN {spoken_key} END AS alias
    FROM body_valid
), sightings AS (
    SELECT *, seq * {slots} + coalesce(entry, 0) AS place,
           '[' || to_json(source)::VARCHAR || ',' || seq::VARCHAR || ',' || coalesce(entry::VARCHAR, 'null')
               || ',' || coalesce(to_json(medium)::VARCHAR, 'null')
               || ',' || coalesce(to_json(user_id)::VARCHAR, 'null') || ']' AS record
    FROM (SELECT * FROM live_sightings UNION ALL BY NAME SELECT * FROM body_sightings)
), aliases AS (
    -- The first typed entry with an id names the typed key its spoken key stands for.
    SELECT alias, arg_min(key, place) AS target FROM sightings WHERE alias IS NOT NULL GROUP BY alias
), grouped AS (
    SELECT CASE WHEN s.spoken THEN coalesce(a.target, s.key) ELSE s.key END AS dedup_key,
           min(place) AS id,
           arg_min({{'seq': seq, 'entry': entry, 'source': source, 'conversation_id': conversation_id,
                     'text': text, 'event_id': event_id, 'raw_event': raw_event}}, place) AS first,
           arg_min(medium, place) FILTER (WHERE medium IS NOT NULL) AS medium,
           arg_min(user_id, place) FILTER (WHERE user_id IS NOT NULL) AS user_id,
           min(turn_at) AS "timestamp",
           string_agg(record, ',' ORDER BY place) AS records,
           list_sort(list_distinct(list(source))) AS sources
    FROM sightings s LEFT JOIN aliases a ON s.spoken AND a.alias = s.key
    GROUP BY ALL
)
SELECT id, dedup_key,
       CASE WHEN medium = '{Medium.TEXT}' THEN '{message}' ELSE '{transcript}' END AS kind,
       first.conversation_id AS session_id,
       coalesce(user_id, '{DEFAULT_USER_ID}') AS user_id,
       first.text AS text,
       "timestamp",
       '{{"raw_event":' || first.raw_event || ',"seq":' || first.seq::VARCHAR
           || ',"source":' || to_json(first.source)::VARCHAR
           || ',"event_id":' || coalesce(first.event_id::VARCHAR, 'null')
           || ',"entry":' || coalesce(first.entry::VARCHAR, 'null')
           || ',"sightings":[' || records || ']}}' AS metadata,
       to_json(sources) AS sources,
       first.seq AS seq
FROM grouped"""


def view_statements(segments: str, placeholder: str) -> list[str]:
    """Return the ``CREATE OR REPLACE VIEW`` statements for segments in folder ``segments``.

    Args:
        segments: The events folder as DuckDB should see it: relative to a
            ``file_search_path`` entry, or absolute. Forward slashes.
        placeholder: An empty file, read along with the segments: with no
            segment at all DuckDB would otherwise not know the columns.

    """
    folder = segments.rstrip("/") + "/"
    glob = (
        "[" + ", ".join(_literal(path) for path in (*(folder + g for g in _SEGMENT_GLOBS), placeholder)) + "]"
    )
    events = f"""CREATE OR REPLACE VIEW events AS
SELECT seq, received_at, source, direction, agent_id, connection_id, conversation_id,
       event->>'type' AS type, event, raw, raw_b64, crc32, filename AS segment
FROM read_json({glob}, format = 'newline_delimited', columns = {_struct(_ENVELOPE_TYPES)},
               ignore_errors = true, allow_empty = true, filename = true)
WHERE seq IS NOT NULL"""
    user_texts = _user_texts_view(glob)
    conversations = """CREATE OR REPLACE VIEW conversations AS
WITH parts AS (
    -- One row per (connection, conversation id) first: the init frame a client
    -- sends before the server names the conversation has no conversation id.
    SELECT connection_id, conversation_id,
           max(agent_id) AS agent_id,
           min(received_at) AS first_event_at,
           max(received_at) AS last_event_at,
           count(*) AS events,
           count(*) FILTER (WHERE type = 'agent_response' AND direction = 'in') AS agent_turns,
           max(seq) FILTER (WHERE type = 'error') AS error_seq,
           arg_max(event, seq) FILTER (WHERE type = 'error') AS last_error,
           bool_or(type = 'agent_tool_response'
                   AND event->>'$.agent_tool_response.tool_name' = 'end_call') AS agent_ended,
           list_distinct(list(source)) AS sources
    FROM events
    GROUP BY connection_id, conversation_id
), resolved AS (
    SELECT *, coalesce(conversation_id, max(conversation_id) OVER (PARTITION BY connection_id)) AS conv
    FROM parts
), merged AS (
    SELECT conv AS conversation_id,
           max(agent_id) AS agent_id,
           min(first_event_at) AS first_event_at,
           max(last_event_at) AS last_event_at,
           sum(events)::BIGINT AS events,
           sum(agent_turns)::BIGINT AS agent_turns,
           arg_max(last_error, error_seq) AS last_error,
           bool_or(agent_ended) AS agent_ended,
           list_sort(list_distinct(flatten(list(sources)))) AS sources
    FROM resolved
    WHERE conv IS NOT NULL
    GROUP BY conv
), turns AS (
    SELECT session_id, count(*) AS user_turns FROM user_texts GROUP BY session_id
)
SELECT m.conversation_id, m.agent_id, m.first_event_at, m.last_event_at,
       m.last_event_at - m.first_event_at AS duration,
       coalesce(t.user_turns, 0) AS user_turns,
       m.agent_turns,
       m.events,
       CASE WHEN m.last_error IS NOT NULL THEN 'error'
            WHEN m.agent_ended THEN 'agent_end_call'
            ELSE 'no_end_event' END AS ended_by,
       m.last_error->>'$.error_event.error_type' AS end_error_type,
       TRY_CAST(m.last_error->>'$.error_event.code' AS INTEGER) AS end_error_code,
       m.last_error->>'$.error_event.message' AS end_error_message,
       to_json(m.sources) AS sources
FROM merged m LEFT JOIN turns t ON t.session_id = m.conversation_id"""
    daily = """CREATE OR REPLACE VIEW daily_activity AS
WITH per_day AS (
    SELECT CAST(timezone('UTC', received_at) AS DATE) AS day,
           count(*) AS events,
           count(DISTINCT conversation_id) AS conversations,
           count(*) FILTER (WHERE type = 'agent_response' AND direction = 'in') AS agent_turns,
           count(*) FILTER (WHERE type = 'error') AS errors
    FROM events
    GROUP BY ALL
), turns AS (
    SELECT CAST(timezone('UTC', TRY_CAST("timestamp" AS TIMESTAMPTZ)) AS DATE) AS day,
           count(*) AS user_turns,
           count(DISTINCT user_id) AS users
    FROM user_texts
    GROUP BY ALL
)
SELECT coalesce(p.day, t.day) AS day,
       coalesce(p.events, 0) AS events,
       coalesce(p.conversations, 0) AS conversations,
       coalesce(t.user_turns, 0) AS user_turns,
       coalesce(t.users, 0) AS users,
       coalesce(p.agent_turns, 0) AS agent_turns,
       coalesce(p.errors, 0) AS errors
FROM per_day p FULL OUTER JOIN turns t ON p.day = t.day"""
    return [events, user_texts, conversations, daily]


def _placeholder_path(duckdb_path: Path) -> Path:
    return duckdb_path.with_name(duckdb_path.name + ".no-segments.jsonl")


def _segments_path(data_dir: Path, base: Path) -> tuple[str, bool]:
    """Return the events folder relative to ``base`` when possible, and whether it is relative."""
    folder = events_dir(data_dir).resolve()
    try:
        relative = os.path.relpath(folder, base)
    except ValueError:  # another drive on Windows
        return folder.as_posix(), False
    if "," in str(base):  # file_search_path is comma-separated
        return folder.as_posix(), False
    return Path(relative).as_posix(), True


def _fingerprint(statements: list[str]) -> str:
    digest = hashlib.sha256(f"{_VIEWS_VERSION}\n".encode())
    for statement in statements:
        digest.update(statement.encode())
    return digest.hexdigest()


def _stored_fingerprint(conn: duckdb.DuckDBPyConnection) -> str | None:
    try:
        row = conn.execute(f"SELECT fingerprint FROM {_META_TABLE}").fetchone()
    except duckdb.CatalogException:
        return None
    return str(row[0]) if row else None


def _configure(conn: duckdb.DuckDBPyConnection, base: Path, relative: bool) -> None:
    if relative:
        conn.execute(f"SET file_search_path = {_literal(str(base))}")
    conn.execute("SET TimeZone = 'UTC'")
    # DuckDB draws its progress bar on stdout, which would corrupt csv and json output.
    conn.execute("SET enable_progress_bar = false")


def _is_lock_conflict(exc: duckdb.Error) -> bool:
    return "lock" in str(exc).lower()


def open_analytics(
    data_dir: Path, duckdb_path: Path | None = None, *, timeout: float = 10.0
) -> duckdb.DuckDBPyConnection:
    """Open the analytics database read-only, creating or refreshing its views first.

    Read-only connections let several ``capture sql`` run at once, also while
    ``capture ingest`` appends. The connection's settings are locked, and
    :func:`run_query` runs only statements that read: together, no statement
    given to it writes a file (``COPY``, ``EXPORT``, ``ATTACH`` are refused;
    logging and profiling to files cannot be turned on). DuckDB's own file
    allow-list (``enable_external_access = false`` with
    ``allowed_directories``) is not used: it cannot tell reading from
    writing, so the one folder the views must read, the log, would be the
    one left writable; and reading the user's other files (a CSV to join) is
    a feature. When the views are missing or stale (first
    use, the data dir moved relative to the ``.duckdb`` file, a new capture
    version), the file is opened for writing once to recreate them; another
    process creating them at the same moment is waited for up to ``timeout``.

    Args:
        data_dir: The data dir whose ``events/`` the views read.
        duckdb_path: Default ``<data dir>/analytics.duckdb``.
        timeout: Seconds to wait for another process holding the file for writing.

    Raises:
        ProjectionError: the file cannot be opened or the views created.
        KeyboardInterrupt: Ctrl-C while it ran (DuckDB's own name for it is
            a ``RuntimeError``).
        LogError: ``events/`` holds junk named like a segment (the views would fail on it).

    """
    check_segments(events_dir(data_dir))
    duckdb_path = duckdb_path or default_duckdb_path(data_dir)
    base = duckdb_path.parent.resolve()
    segments, relative = _segments_path(data_dir, base)
    placeholder = _placeholder_path(duckdb_path.resolve())
    statements = view_statements(segments, placeholder.name if relative else placeholder.as_posix())
    fingerprint = _fingerprint(statements)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if not placeholder.exists():
                placeholder.parent.mkdir(parents=True, exist_ok=True)
                placeholder.touch()
            if duckdb_path.exists():
                conn = duckdb.connect(str(duckdb_path), read_only=True)
                try:
                    _configure(conn, base, relative)
                    if _stored_fingerprint(conn) == fingerprint:
                        # No statement can change a setting from here on:
                        # not the search path, not where DuckDB logs or
                        # profiles to (SELECT * FROM enable_logging(...)
                        # would write files anywhere).
                        conn.execute("SET lock_configuration = true")
                        return conn
                except BaseException:
                    conn.close()
                    raise
                conn.close()
            _create_views(duckdb_path, base, relative, statements, fingerprint)
        except duckdb.Error as exc:
            if _is_lock_conflict(exc) and time.monotonic() < deadline:
                time.sleep(0.05)  # another process is (re)creating the views
                continue
            raise ProjectionError(f"cannot open {duckdb_path}: {exc}") from exc
        except OSError as exc:
            raise ProjectionError(f"cannot open {duckdb_path}: {exc}") from exc
        except RuntimeError as exc:
            # DuckDB turns a Ctrl-C that lands in its call on this thread into
            # RuntimeError("Query interrupted"): give it back its own name.
            if "interrupted" in str(exc).lower():
                raise KeyboardInterrupt from exc
            raise


def _create_views(
    duckdb_path: Path, base: Path, relative: bool, statements: list[str], fingerprint: str
) -> None:
    duckdb_path.parent.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect(str(duckdb_path))
    try:
        _configure(conn, base, relative)
        conn.execute("BEGIN TRANSACTION")
        for statement in statements:
            conn.execute(statement)
        conn.execute(f"CREATE OR REPLACE TABLE {_META_TABLE} (fingerprint VARCHAR, created_at TIMESTAMPTZ)")
        conn.execute(f"INSERT INTO {_META_TABLE} VALUES (?, now())", [fingerprint])
        conn.execute("COMMIT")
    finally:
        conn.close()


# The statements capture sql runs: they read. Everything else (COPY, EXPORT,
# ATTACH, SET, INSTALL/LOAD, CREATE, CALL, PRAGMA, ...) is refused. CALL is not
# a read: CHECKPOINT is one. MULTI is what an unnamed PIVOT expands to.
_READS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})

# Where the explained statement starts: after comments, EXPLAIN, its options
# and ANALYZE (which runs the statement, so the statement must read).
_EXPLAIN_PREFIX = re.compile(
    r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*EXPLAIN\b\s*(?:\([^)]*\)\s*)?(?:ANALY[SZ]E\b)?",
    re.IGNORECASE | re.DOTALL,
)

# How often a cancellable call looks at its event: the delay of a cancel.
_POLL = 0.05

T = TypeVar("T")


def _parse(sql: str) -> list[duckdb.Statement]:
    try:
        return list(duckdb.extract_statements(sql))
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from exc


def _check_reads(statement: duckdb.Statement) -> None:
    kind = statement.type
    if kind == duckdb.StatementType.EXPLAIN:
        prefix = _EXPLAIN_PREFIX.match(statement.query)
        inner = _parse(statement.query[prefix.end() :]) if prefix else []
        if len(inner) == 1 and inner[0].type == duckdb.StatementType.SELECT:
            return
        raise QueryRefusedError("capture sql explains only statements that read (SELECT …)")
    if kind not in _READS:
        name = kind.name.replace("_", " ")
        raise QueryRefusedError(
            f"capture sql only reads: a {name} statement is refused "
            "(to export a result, use --output FILE with --format csv|json|parquet)"
        )


def read_statements(sql: str) -> list[duckdb.Statement]:
    """Split ``sql`` into its statements, each checked to only read.

    Reads are ``SELECT`` (with ``WITH``, ``FROM``-first, ``VALUES``, ``SHOW``,
    ``DESCRIBE``, ``SUMMARIZE``, a ``PIVOT`` naming its values) and
    ``EXPLAIN`` of one. Pass the statements to :func:`run_query` as they are:
    what runs is what was checked, not a text parsed again.

    Raises:
        QueryError: DuckDB cannot parse ``sql`` (its message).
        QueryRefusedError: a statement would write or change a setting, or
            there is none.

    """
    statements = _parse(sql)
    if not statements:
        raise QueryRefusedError("no SQL statement given")
    for statement in statements:
        _check_reads(statement)
    return statements


def _one_statement(sql: str | duckdb.Statement) -> duckdb.Statement:
    if isinstance(sql, duckdb.Statement):
        _check_reads(sql)
        return sql
    statements = read_statements(sql)
    if len(statements) > 1:
        raise QueryRefusedError(f"one statement at a time: this is {len(statements)}")
    return statements[0]


def _call(conn: duckdb.DuckDBPyConnection, call: Callable[[], T], cancel: threading.Event | None) -> T:
    """Run ``call`` (a DuckDB call on ``conn``); with ``cancel``, stop it soon after the event is set.

    With ``cancel`` the call runs on a worker thread while this one waits and
    watches the event (set it from a signal handler: Python runs handlers in
    the main thread, which a DuckDB call would block until the query ends);
    once it is set, the query is interrupted (``conn.interrupt()``) and, when
    the call has stopped, :class:`QueryCancelledError` is raised. The event
    is never cleared here: a set event cancels every later call too.
    """
    if cancel is None:
        try:
            return call()
        except duckdb.Error as exc:
            raise QueryError(str(exc)) from exc
    if cancel.is_set():
        raise QueryCancelledError("query cancelled")
    outcome: list[tuple[bool, Any]] = []
    finished = threading.Event()

    def work() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed over to the waiting thread
            outcome.append((False, exc))
        finally:
            finished.set()

    threading.Thread(target=work, name="capture sql query", daemon=True).start()
    # Never return while the call runs: the connection must be idle before
    # anyone uses (or closes) it again, and a thread still inside DuckDB when
    # the interpreter exits aborts the process.
    while not finished.wait(_POLL):
        if cancel.is_set():
            try:
                conn.interrupt()
            except duckdb.Error:
                pass  # "busy": the call is not yet where it can be interrupted; again shortly
    if cancel.is_set():
        raise QueryCancelledError("query cancelled")
    done, value = outcome[0]
    if done:
        return cast(T, value)
    if isinstance(value, duckdb.Error):
        raise QueryError(str(value)) from value
    raise value


@dataclass
class QueryResult:
    """The result of :func:`run_query`.

    Attributes:
        columns: Column names (empty for a statement that returns nothing).
        types: DuckDB type names, one per column (``VARCHAR``, ``JSON``,
            ``TIMESTAMP WITH TIME ZONE``, ``INTERVAL``, ``VARCHAR[]``, …).
        rows: The rows, fetched lazily in batches; iterate once. Fetching
            can raise :class:`QueryError`, and is cancelled as
            :func:`run_query` is.

    """

    columns: list[str]
    types: list[str]
    rows: Iterator[tuple[Any, ...]]


def _fetch(
    conn: duckdb.DuckDBPyConnection, batch_rows: int, cancel: threading.Event | None
) -> Iterator[tuple[Any, ...]]:
    while True:
        batch = _call(conn, lambda: conn.fetchmany(batch_rows), cancel)
        if not batch:
            return
        yield from batch


def run_query(
    conn: duckdb.DuckDBPyConnection,
    sql: str | duckdb.Statement,
    *,
    cancel: threading.Event | None = None,
    batch_rows: int = 10_000,
) -> QueryResult:
    """Run one statement that reads, given by a user.

    Args:
        conn: From :func:`open_analytics`.
        sql: One statement: a text, or one of :func:`read_statements`.
        cancel: Set it (from a SIGINT handler, say) to cancel the statement,
            running or while its rows are fetched, within a fraction of a
            second; ``conn`` can then run the next one.
        batch_rows: Rows fetched at a time.

    Raises:
        QueryError: DuckDB rejected or failed the statement; the message is DuckDB's.
        QueryRefusedError: the statement would write, or ``sql`` is not one statement.
        QueryCancelledError: ``cancel`` was set.

    """
    statement = _one_statement(sql)
    _call(conn, lambda: conn.execute(statement), cancel)
    description = conn.description
    if not description:
        return QueryResult([], [], iter(()))
    columns = [str(column[0]) for column in description]
    types = [str(column[1]) for column in description]
    return QueryResult(columns, types, _fetch(conn, batch_rows, cancel))


def write_parquet(
    conn: duckdb.DuckDBPyConnection,
    sql: str | duckdb.Statement,
    path: Path,
    *,
    cancel: threading.Event | None = None,
) -> None:
    """Write the result of one statement that reads to a Parquet file at ``path``, in DuckDB's types.

    Durations (``INTERVAL``) are written as seconds (``DOUBLE``), as in CSV
    and JSON: Parquet's interval type keeps only milliseconds.

    Cancelled as :func:`run_query` is (a partial file may be left at
    ``path``: write to a scratch name and rename it).

    Raises:
        QueryError: the statement failed, or the file could not be written.
        QueryRefusedError: as :func:`run_query`.
        QueryCancelledError: ``cancel`` was set.

    """
    statement = _one_statement(sql)

    def write() -> None:
        relation = conn.sql(statement.query)
        columns = []
        for name, kind in zip(relation.columns, relation.types, strict=True):
            quoted = '"' + name.replace('"', '""') + '"'
            # Parquet's interval keeps milliseconds only: durations in seconds, as in CSV and JSON.
            columns.append(f"epoch({quoted}) AS {quoted}" if str(kind) == "INTERVAL" else quoted)
        relation.project(", ".join(columns)).write_parquet(str(path))

    _call(conn, write, cancel)
