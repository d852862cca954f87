"""The one exception hierarchy of ``capture``.

Every error the library raises on purpose is a :class:`CaptureError`; third-party
exceptions (``OSError``, ``sqlite3``, ``duckdb``, ``websockets``, ``aiohttp``) are
mapped onto it where they enter, with ``raise ... from exc``. The CLI catches
only ``CaptureError``, prints its message as one line and exits with its
``exit_code``.

Our exception hierarchy:

* :class:`CaptureError` (exit 1)
    * :class:`ConfigError` (exit 2): a flag, a variable or a credential is wrong;
      retrying cannot help, the user must fix something.
        * :class:`AuthError`: the server refused our credentials or agent id.
    * :class:`LogError`: the event log cannot be used.
        * :class:`LockedError`: another writer holds the data dir's lock.
        * :class:`LogWriteError`: a write or fsync failed; never retried.
        * :class:`LogCorruptError`: a closed segment does not parse.
    * :class:`~ingest.sources.webhook.signature.SignatureError`: a webhook delivery's
      signature is missing, malformed, stale or wrong (answered 401).
    * :class:`ProjectionError`: a projection database cannot be used.
    * :class:`QueryError`: a SQL statement given by the user failed.
        * :class:`QueryRefusedError` (exit 2): ``capture sql`` does not run it
          (it would write, or there is not exactly one statement).
        * :class:`QueryCancelledError` (exit 130): the user cancelled it (Ctrl-C).

"""

from __future__ import annotations


__all__ = [
    "AuthError",
    "CaptureError",
    "ConfigError",
    "LockedError",
    "LogCorruptError",
    "LogError",
    "LogWriteError",
    "ProjectionError",
    "QueryCancelledError",
    "QueryError",
    "QueryRefusedError",
]


class CaptureError(Exception):
    """Base class of every error ``capture`` raises on purpose.

    The message is a sentence meant for the user: it says what went wrong and,
    where possible, what to do about it.

    """

    exit_code: int = 1


class ConfigError(CaptureError):
    """A flag, an environment variable or a credential must be fixed."""

    exit_code = 2


class AuthError(ConfigError):
    """The server refused the API key, the agent id or a conversation override."""


class LogError(CaptureError):
    """The event log cannot be used."""


class LockedError(LogError):
    """Another process holds the data dir's writer lock."""


class LogWriteError(LogError):
    """A write or an fsync of the log failed.

    It is never retried (a failed fsync may have dropped dirty pages, see
    PostgreSQL's "fsyncgate"): the process stops and the next start recovers.

    """


class LogCorruptError(LogError):
    """A closed segment holds bytes that are not a valid log line."""


class ProjectionError(CaptureError):
    """A projection database cannot be opened, migrated or written."""


class QueryError(CaptureError):
    """A SQL statement given by the user failed."""


class QueryRefusedError(QueryError):
    """A SQL statement ``capture sql`` does not run: it would write, or it is not one statement."""

    exit_code = 2


class QueryCancelledError(QueryError):
    """A SQL statement was cancelled while it ran (Ctrl-C); the connection can run the next one."""

    exit_code = 130
