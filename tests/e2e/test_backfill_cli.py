"""``capture backfill`` as a user runs it: the summary, refusals, the lock, kill -9, --follow, live rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ingest.log.writer import LogWriter, events_dir
from ingest.simulator import SimulatorThread
from tests.e2e.commands import (
    TIMEOUT,
    assert_children_never_saw,
    capture,
    one_line,
    running,
    start,
    user_texts,
    wait_until,
)
from tests.ingest.sources.rest.test_backfill import AGENT, KEY, account, finished, rest_lines


def backfill_args(sim: SimulatorThread, data_dir: Path, *args: str) -> list[str]:
    return ["backfill", "--agent-id", AGENT, "--base-url", sim.http_url, "--data-dir", str(data_dir), *args]


def backfill(
    sim: SimulatorThread, data_dir: Path, *args: str, key: str | None = KEY
) -> subprocess.CompletedProcess[str]:
    return capture(*backfill_args(sim, data_dir, *args), **({"ELEVENLABS_API_KEY": key} if key else {}))


@account(
    conversations=130,
    other_agent_conversations=12,
    processing=0,
    escaped_every=5,
    pretty_every=11,
    rest_latency=0.002,
)
def test_pages_done_and_failed_logged_once_verbatim(simulator: SimulatorThread, data_dir: Path) -> None:
    result = backfill(simulator, data_dir, "--page-size", "25", "--concurrency", "3", "--no-project")
    assert result.returncode == 0, result.stderr
    assert "130 conversations listed, 130 logged" in result.stdout

    sim = simulator.sim
    assert sim.account is not None
    lists = [r for r in sim.rest_requests if r.kind == "list"]
    assert len(lists) == 6  # 130 / 25, newest first, the agent filter applied by the server
    assert all("agent_id=agent_demo" in r.path and "page_size=25" in r.path for r in lists)

    lines = rest_lines(data_dir)
    ids = [line.conversation_id for line in lines]
    assert Counter(ids) == Counter(finished(simulator))
    statuses = Counter(sim.account[i].status for i in ids if i is not None)
    assert statuses["done"] > 0 and statuses["failed"] > 0
    kinds: Counter[str] = Counter()
    for line in lines:
        assert line.conversation_id is not None
        assert line.direction == "in"
        assert line.envelope["agent_id"] == AGENT
        assert line.envelope["connection_id"] is None
        conversation = sim.account[line.conversation_id]
        # The body exactly as the server sent it: escapes, literal UTF-8, line breaks.
        assert line.frame == sim.account.body(line.conversation_id)
        if conversation.encoding == "pretty":
            assert line.event is None and line.envelope["raw"] == line.frame.decode()
        else:
            assert line.event is not None and line.event["conversation_id"] == line.conversation_id
        kinds[conversation.encoding] += 1
    assert kinds["pretty"] and kinds["escaped"] and kinds["compact"]
    assert any(b"\\u" in line.frame for line in lines) and any("ü".encode() in line.frame for line in lines)
    media = {
        entry["source_medium"]
        for line in lines
        if line.event is not None
        for entry in line.event["transcript"]
        if entry["role"] == "user"
    }
    assert media == {"audio", "text"}
    assert KEY.encode() not in b"".join(p.read_bytes() for p in events_dir(data_dir).iterdir())
    assert KEY not in result.stdout + result.stderr
    assert not (data_dir / "whatsapp_storage.db").exists()  # --no-project


@account(conversations=12, processing=0)
def test_a_second_run_logs_nothing_new_and_the_table_has_every_turn(
    simulator: SimulatorThread, data_dir: Path
) -> None:
    """The live projection runs by default: when the backfill exits, its rows are in user_texts."""
    first = backfill(simulator, data_dir)
    assert first.returncode == 0, first.stderr
    assert simulator.sim.account is not None
    said = {
        (c.conversation_id, e["message"])
        for c in simulator.sim.account.of_agent(AGENT, "done")
        for e in c.user_entries()
    }
    assert said and {(r[0], r[1]) for r in user_texts(data_dir / "whatsapp_storage.db")} == said
    again = backfill(simulator, data_dir)
    assert again.returncode == 0, again.stderr
    assert "0 logged" in again.stdout and "12 already in the log" in again.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@account(conversations=200, processing=0, rest_latency=0.005)
def test_killed_run_resumes_and_ends_with_each_conversation_once(
    simulator: SimulatorThread, data_dir: Path
) -> None:
    process = start(*backfill_args(simulator, data_dir, "--no-project"), ELEVENLABS_API_KEY=KEY)
    try:
        wait_until(lambda: len(rest_lines(data_dir)) >= 40, 20, "40 conversations logged")
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=TIMEOUT)
    before = Counter(line.conversation_id for line in rest_lines(data_dir))
    assert 40 <= len(before) < 200 and set(before.values()) == {1}
    gets_before = sum(r.kind == "get" for r in simulator.sim.rest_requests)

    result = backfill(simulator, data_dir, "--no-project")
    assert result.returncode == 0, result.stderr
    assert f"{len(before)} already in the log" in result.stdout
    after = Counter(line.conversation_id for line in rest_lines(data_dir))
    assert after == Counter(finished(simulator))
    # Nothing already logged was fetched again.
    assert sum(r.kind == "get" for r in simulator.sim.rest_requests) - gets_before == 200 - len(before)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM handling is POSIX here")
@account(conversations=5, processing=0)
def test_follow_catches_a_new_conversation_and_projects_it_live(
    simulator: SimulatorThread, data_dir: Path
) -> None:
    """With --follow a new conversation is logged by the next poll, and its turns reach user_texts meanwhile."""
    db = data_dir / "whatsapp_storage.db"
    args = backfill_args(simulator, data_dir, "--follow", "--interval", "0.2")
    with running(*args, ELEVENLABS_API_KEY=KEY) as process:
        wait_until(lambda: len(rest_lines(data_dir)) == 5, 15, "the first pass")

        async def add() -> str:
            assert simulator.sim.account is not None
            return simulator.sim.account.add(status="done").conversation_id

        new = simulator.run(add())
        wait_until(lambda: new in {line.conversation_id for line in rest_lines(data_dir)}, 15, "the new one")
        assert simulator.sim.account is not None
        said = {(new, e["message"]) for e in simulator.sim.account[new].user_entries()}
        assert said
        wait_until(lambda: said <= {(r[0], r[1]) for r in user_texts(db)}, 20, "its rows in user_texts")
        assert process.poll() is None
        assert_children_never_saw(process, KEY)
    assert Counter(line.conversation_id for line in rest_lines(data_dir)) == Counter(finished(simulator))
    polls = [r for r in simulator.sim.rest_requests if r.kind == "list"]
    assert len(polls) >= 2 and "call_start_after_unix" in polls[-1].path


@account(conversations=3)
def test_wrong_key_exits_2_with_one_line(simulator: SimulatorThread, data_dir: Path) -> None:
    result = backfill(simulator, data_dir, key="sk_wrong_key")
    assert result.returncode == 2
    message = one_line(result.stderr)
    assert "401" in message and "ELEVENLABS_API_KEY" in message and "sk_wrong_key" not in message
    assert not rest_lines(data_dir)


@account(conversations=3)
def test_missing_key_exits_2(simulator: SimulatorThread, data_dir: Path) -> None:
    result = backfill(simulator, data_dir, key=None)
    assert result.returncode == 2 and "ELEVENLABS_API_KEY" in one_line(result.stderr)
    assert not simulator.sim.rest_requests


@account(conversations=3)
def test_the_data_dir_lock_is_respected(simulator: SimulatorThread, data_dir: Path) -> None:
    with LogWriter.open(data_dir):
        started = time.monotonic()
        result = backfill(simulator, data_dir)
    assert result.returncode == 1
    assert str(os.getpid()) in one_line(result.stderr)
    assert time.monotonic() - started < 10
    assert not simulator.sim.rest_requests
