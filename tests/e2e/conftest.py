"""Fixtures the end-to-end runs share with the source tests."""

from __future__ import annotations

from tests.ingest.sources.rest.test_backfill import simulator  # noqa: F401  (parametrize it with account())
