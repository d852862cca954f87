"""A damaged data dir, through the real commands: junk in ``events/`` is one line naming it, in every command."""

from __future__ import annotations

import gzip
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import orjson
import psutil
import pytest

from ingest.log.envelope import Origin, encode_line
from ingest.log.frames import inspect_frame
from ingest.log.segments import segment_name
from ingest.log.writer import events_dir
from ingest.simulator import Scenario, SimulatorThread
from projections.follow import EXIT_GRACE, ORPHAN_DRAIN
from tests.e2e.commands import capture, one_line, start, user_texts, wait_until


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


# --- the end of the log lost, then written again ------------------------------------------------


def _ingest(data_dir: Path, url: str, *args: str) -> list[str]:
    return ["ingest", "--agent-id", "agent_demo", "--base-url", url, "--data-dir", str(data_dir), *args]


def _status(data_dir: Path) -> dict[str, Any]:
    result = capture("status", "--data-dir", str(data_dir), "--json")
    assert result.returncode == 0, result.stderr
    return cast(dict[str, Any], orjson.loads(result.stdout))


def _turns(data_dir: Path) -> list[str]:
    return [row[1] for row in user_texts(data_dir / "whatsapp_storage.db")]


def test_after_the_log_lost_its_end_the_next_ingest_rows_are_not_skipped(data_dir: Path) -> None:
    """The reproduction through the commands: ingest, lose the end (power cut), ingest again."""
    with SimulatorThread(default=Scenario(user_turns=["one", "two", "three"])) as thread:
        first = capture(*_ingest(data_dir, thread.http_url, "--max-conversations", "2"))
        assert first.returncode == 0, first.stderr
        assert _turns(data_dir).count("three") == 2
        active = sorted(events_dir(data_dir).glob("*.jsonl"))[-1]
        lines = active.read_bytes().splitlines(keepends=True)
        active.write_bytes(b"".join(lines[: len(lines) // 2]))  # the second conversation is gone
        status = _status(data_dir)
        assert status["projection"]["lag_lines"] == 0
        [problem] = status["projection"]["problems"]
        assert "before the table's position" in problem and "capture rebuild" in problem

        second = capture(*_ingest(data_dir, thread.http_url, "--max-conversations", "1"))
        assert second.returncode == 0, second.stderr
        assert "rebuilding the table from the log" in second.stderr
    rebuilt = capture("rebuild", "--data-dir", str(data_dir), "--db", str(data_dir / "fresh.db"))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert user_texts(data_dir / "whatsapp_storage.db") == user_texts(data_dir / "fresh.db")
    assert _turns(data_dir).count("three") == 2  # the lost conversation's rows went with its lines
    assert _status(data_dir)["projection"]["problems"] == []


def test_a_damaged_line_is_reported_by_status_project_and_rebuild(data_dir: Path) -> None:
    with SimulatorThread(default=Scenario(user_turns=["one", "two", "three"])) as thread:
        first = capture(*_ingest(data_dir, thread.http_url, "--max-conversations", "1", "--no-project"))
        assert first.returncode == 0, first.stderr
        active = sorted(events_dir(data_dir).glob("*.jsonl"))[-1]
        lines = active.read_bytes().splitlines(keepends=True)
        [at] = [n for n, line in enumerate(lines) if b'"user_transcript":"two"' in line]
        lines[at] = lines[at].replace(b'"two"', b'"twx"')  # its crc32 fails
        active.write_bytes(b"".join(lines))
        again = capture(*_ingest(data_dir, thread.http_url, "--max-conversations", "1", "--no-project"))
        assert again.returncode == 0, again.stderr
        assert "holds a damaged line" in again.stderr
    seq = orjson.loads(lines[at - 1])["seq"] + 1
    where = f"seq {seq} ({active.name}, byte {sum(map(len, lines[:at])):,})"
    project = capture("project", "--data-dir", str(data_dir))
    assert project.returncode == 0, project.stderr
    assert where in project.stdout
    assert any(where in problem for problem in _status(data_dir)["projection"]["problems"])
    rebuild = capture("rebuild", "--data-dir", str(data_dir))
    assert rebuild.returncode == 0 and where in rebuild.stdout
    assert _turns(data_dir).count("two") == 1  # the second conversation's; nothing after the damage moved


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_9_of_ingest_leaves_no_follower_running(data_dir: Path) -> None:
    with SimulatorThread(default=Scenario(end="wait"), ping_interval=0.05) as thread:
        proc = start(*_ingest(data_dir, thread.http_url))
        try:
            wait_until(lambda: bool(psutil.Process(proc.pid).children()), 30, "the live projection to start")
            [follower] = psutil.Process(proc.pid).children()
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
        finally:
            proc.kill()
        wait_until(lambda: _gone(follower), ORPHAN_DRAIN + EXIT_GRACE + 2, "the follower to end")


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
