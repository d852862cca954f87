"""A damaged data dir, through the real commands: junk in ``events/`` is one line naming it, in every command."""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ingest.log.envelope import Origin, encode_line
from ingest.log.frames import inspect_frame
from ingest.log.segments import segment_name
from tests.e2e.commands import capture, one_line


ORIGIN = Origin("agent_ws", "out", "agent_x", "conn-1", "conv_1")
STAMP = "2026-11-25T12:00:00.000000Z"


def _lines(first: int, last: int) -> bytes:
    frame = '{{"type":"user_message","text":"line {}"}}'
    return b"".join(
        encode_line(seq, STAMP, ORIGIN, inspect_frame(frame.format(seq))) for seq in range(first, last + 1)
    )


def _log(data_dir: Path) -> Path:
    """A log of two segments: seqs 1-3 (closed) and 7-9 (active); the junk goes where 4-6 would be."""
    events = data_dir / "events"
    events.mkdir(parents=True)
    (events / segment_name(1)).write_bytes(_lines(1, 3))
    (events / segment_name(7)).write_bytes(_lines(7, 9))
    return events


def _overflowing_name(events: Path) -> Path:
    path = events / ("9" * 20 + ".jsonl")
    path.write_bytes(_lines(4, 6))
    return path


def _not_gzip(events: Path) -> Path:
    path = events / (segment_name(4) + ".gz")
    path.write_bytes(_lines(4, 6))
    return path


def _truncated_gzip(events: Path) -> Path:
    path = events / (segment_name(4) + ".gz")
    path.write_bytes(gzip.compress(_lines(4, 6))[:-12])
    return path


def _folder(events: Path) -> Path:
    path = events / segment_name(4)
    path.mkdir()
    return path


def _broken_link(events: Path) -> Path:
    path = events / segment_name(4)
    path.symlink_to(events / "gone.jsonl")
    return path


def _unreadable(events: Path) -> Path:
    path = events / segment_name(4)
    path.write_bytes(_lines(4, 6))
    path.chmod(0)
    return path


JUNK: dict[str, Callable[[Path], Path]] = {
    "overflowing name": _overflowing_name,
    "not gzip": _not_gzip,
    "truncated gzip": _truncated_gzip,
    "folder": _folder,
    "broken link": _broken_link,
    "unreadable": _unreadable,
}

SECRETS = {"ELEVENLABS_API_KEY": "sk_test_0123456789", "ELEVENLABS_WEBHOOK_SECRET": "wsec_test_0123456789"}
# Every command that reads or writes the data dir. The network is never reached: the
# base URL is a closed port, and each command must stop at the junk before using it.
COMMANDS: dict[str, list[str]] = {
    name: args.split()
    for name, args in {
        "ingest": "ingest --agent-id agent_x --base-url http://127.0.0.1:9 --max-conversations 1",
        "webhook": "webhook --port 0",
        "backfill": "backfill --agent-id agent_x --base-url http://127.0.0.1:9",
        "monitor": "monitor --agent-id agent_x --base-url http://127.0.0.1:9 --max-conversations 1",
        "relay": "relay --agent-id agent_x --port 0 --base-url http://127.0.0.1:9",
        "status": "status",
        "project": "project",
        "rebuild": "rebuild",
        "demo": "demo --conversations 1",
    }.items()
}
COMMANDS["sql"] = ["sql", "SELECT count(*) FROM events"]


@pytest.mark.parametrize("junk", JUNK, ids=list(JUNK))
@pytest.mark.parametrize("command", COMMANDS, ids=list(COMMANDS))
def test_junk_in_events_is_one_line_naming_it_in_every_command(
    tmp_path: Path, command: str, junk: str
) -> None:
    if junk == "unreadable" and (sys.platform == "win32" or os.geteuid() == 0):
        pytest.skip("root reads a file whatever its mode")
    if junk == "truncated gzip" and command in {"ingest", "webhook", "backfill", "monitor", "relay", "demo"}:
        pytest.skip("a writer reads only the active segment: a damaged stream inside is for the readers")
    data_dir = tmp_path / "data"
    path = JUNK[junk](_log(data_dir))
    result = capture(*COMMANDS[command], "--data-dir", str(data_dir), **SECRETS)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = one_line(result.stderr)
    assert path.name in line, line
