"""``capture sql`` as a user (or someone with a bad idea) runs it: it reads, it never writes the data dir."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ingest.log.envelope import Origin, encode_line
from ingest.log.frames import inspect_frame
from ingest.log.segments import list_segments
from ingest.log.writer import events_dir
from tests.e2e.commands import capture, one_line
from tests.projections.test_duckdb_views import sample_log


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    sample_log(path)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def _forged_line(seq: int) -> str:
    """A valid log line (right crc32) saying a user said something they never said."""
    frame = inspect_frame(
        '{"type":"user_transcript","user_transcription_event":{"user_transcript":"FORGED","event_id":9}}'
    )
    origin = Origin("agent_ws", "in", "agent_x", "conn-9", "conv_9")
    return encode_line(seq, "2026-01-01T00:00:00.000000Z", origin, frame).decode().rstrip("\n")


def test_a_copy_into_the_log_is_refused_and_nothing_is_forged(data_dir: Path) -> None:
    """Issue 11 §4: COPY ... TO a closed segment (and to a new one) changes nothing in the log."""
    events = events_dir(data_dir)
    closed = list_segments(events)[0]
    before = _snapshot(events)
    next_seq = 30  # sample_log wrote 29 lines
    new_segment = events / f"{next_seq:020d}.jsonl"
    for target, seq in ((closed, 1), (new_segment, next_seq)):
        line = _forged_line(seq).replace("'", "''")
        statement = f"COPY (SELECT '{line}' AS line) TO '{target}' (FORMAT csv, HEADER false, QUOTE '')"
        result = capture("sql", statement, "--data-dir", str(data_dir))
        assert result.returncode == 2, result.stderr
        assert "COPY" in one_line(result.stderr) and "Traceback" not in result.stderr
    assert _snapshot(events) == before
    rebuild = capture("rebuild", "--data-dir", str(data_dir))
    assert rebuild.returncode == 0, rebuild.stderr
    conn = sqlite3.connect(data_dir / "whatsapp_storage.db")
    try:
        assert conn.execute("SELECT count(*) FROM user_texts WHERE text = 'FORGED'").fetchone() == (0,)
    finally:
        conn.close()
