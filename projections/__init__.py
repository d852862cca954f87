"""Disposable, idempotent views of the event log: SQLite user texts and DuckDB analytics."""
