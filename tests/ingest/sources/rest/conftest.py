"""The REST tests' simulator fixture, for every module here (parametrize it with ``account()``)."""

from tests.ingest.sources.rest.test_backfill import simulator  # noqa: F401
