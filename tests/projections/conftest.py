"""Fixtures of the projection tests: which path the reader takes, a big log for kill -9 tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import projections.reader as reader
from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.segments import RotationPolicy
from ingest.log.writer import FsyncPolicy, LogWriter
from projections.runner import project
from tests.projections.rule_cases import dump, message, transcript


#: Lines of :func:`big_log`.
BIG_LINES = 60_000


@pytest.fixture
def duckdb_always(monkeypatch: pytest.MonkeyPatch) -> None:
    """Have DuckDB read every uncompressed segment, however small."""
    monkeypatch.setattr(reader, "DUCKDB_MIN_BYTES", 0)


@pytest.fixture(params=["duckdb", "python"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test twice: every segment read by DuckDB, then every segment read line by line."""
    monkeypatch.setattr(reader, "DUCKDB_MIN_BYTES", 0 if request.param == "duckdb" else 1 << 62)
    return str(request.param)


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[Any, ...]]]:
    """A log big enough that projecting it takes a while in small batches, and its expected table."""
    data_dir = tmp_path_factory.mktemp("big") / "data"
    with LogWriter.open(
        data_dir, fsync=FsyncPolicy.NEVER, rotation=RotationPolicy(max_bytes=2 << 20)
    ) as writer:
        for n in range(BIG_LINES // 3):
            conv = f"conv_{n // 50}"
            got = Origin("agent_ws", "in", "agent_x", f"conn_{n // 50}", conv)
            sent = Origin("agent_ws", "out", "agent_x", f"conn_{n // 50}", conv)
            writer.append(got, inspect_frame(transcript(f"I said {n}", n % 50)))
            writer.append(sent, inspect_frame(message(f"typed {n}")))
            writer.append(got, inspect_frame('{"type":"vad_score","vad_score_event":{"vad_score":0.9}}'))
    expected = tmp_path_factory.mktemp("expected") / "db"
    project(data_dir, expected)
    table = dump(expected)
    assert len(table) == 2 * BIG_LINES // 3
    return data_dir, table
