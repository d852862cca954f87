"""``capture monitor`` as a user runs it: every live conversation logged, refusals, live rows."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.log.envelope import LogLine
from ingest.simulator import AccountSpec, SimulatorThread
from tests.conftest import TIMEOUT_FACTOR
from tests.e2e.commands import assert_children_never_saw, capture, one_line, running, user_texts, wait_until
from tests.ingest.sources.rest.test_backfill import AGENT, KEY, backfill_in_process
from tests.ingest.sources.test_monitor import monitor_lines


def monitor_args(sim: SimulatorThread, data_dir: Path, *args: str) -> list[str]:
    return [
        "monitor", "--agent-id", AGENT, "--base-url", sim.http_url, "--data-dir", str(data_dir),
        "--poll-interval", "0.05", *args,
    ]  # fmt: skip


def monitor(
    sim: SimulatorThread, data_dir: Path, *args: str, key: str | None = KEY
) -> subprocess.CompletedProcess[str]:
    return capture(*monitor_args(sim, data_dir, *args), **({"ELEVENLABS_API_KEY": key} if key else {}))


@pytest.fixture
def live() -> Iterator[SimulatorThread]:
    spec = AccountSpec(conversations=8, in_progress=3, processing=0, live_turn_gap=0.05, user_turns=(2, 3))
    with SimulatorThread(api_key=KEY, account=spec) as st:
        yield st


def test_attaches_to_each_live_conversation_at_once_and_logs_all_but_audio(
    live: SimulatorThread, data_dir: Path
) -> None:
    sim = live.sim
    assert sim.account is not None
    live_ids = {c.conversation_id for c in sim.account.of_agent(AGENT, "in-progress")}
    assert len(live_ids) == 3
    result = monitor(live, data_dir, "--max-conversations", "3", "--no-project")
    assert result.returncode == 0, result.stderr
    assert "3 conversations monitored" in result.stdout

    # One attachment per live conversation, all open together, each ended by the server with 1000.
    assert Counter(r.conversation_id for r in sim.monitors) == Counter(live_ids)
    assert all(r.http_status == 101 and r.close_code == 1000 for r in sim.monitors)
    opened = [r.opened_at for r in sim.monitors if r.opened_at is not None]
    closed = [r.closed_at for r in sim.monitors if r.closed_at is not None]
    assert len(opened) == len(closed) == 3 and max(opened) < min(closed)

    lines = monitor_lines(data_dir)
    by_conversation: dict[str, list[LogLine]] = defaultdict(list)
    for line in lines:
        assert line.conversation_id is not None and line.direction == "in"
        assert line.envelope["agent_id"] == AGENT
        by_conversation[line.conversation_id].append(line)
    assert set(by_conversation) == live_ids
    for record in sim.monitors:
        logged = by_conversation[record.conversation_id]
        assert len(logged) == record.frames_sent - record.audio_sent
        assert record.audio_sent > 0 and not [line for line in logged if line.type == "audio"]
        assert len({line.envelope["connection_id"] for line in logged}) == 1
        conversation = sim.account[record.conversation_id]
        spoken = [line.event["user_transcription_event"] for line in logged if line.type == "user_transcript"]  # type: ignore[index]
        # What the monitor saw is the transcript the REST API serves later, event ids included.
        assert spoken and [(s["user_transcript"], s["event_id"]) for s in spoken] == [
            (e["message"], e["source_event_id"]) for e in conversation.user_entries()
        ]
    assert len({lines[0].envelope["connection_id"] for lines in by_conversation.values()}) == 3
    assert KEY not in result.stdout + result.stderr
    assert not (data_dir / "whatsapp_storage.db").exists()  # --no-project

    # Once ended they are processing, then done: the backfill picks them up.
    report = backfill_in_process(live, data_dir, wait_pending=5 * TIMEOUT_FACTOR, pending_delay=0.05)
    assert (report.logged, report.unfinished) == (8, 0)


@pytest.mark.parametrize("refusal", ["http_403", "close_1008"])
def test_not_enabled_exits_2_with_one_line_and_no_retry_storm(refusal: str, data_dir: Path) -> None:
    spec = AccountSpec(conversations=5, in_progress=3, processing=0)
    with SimulatorThread(api_key=KEY, account=spec, monitor_enabled=False, monitor_refusal=refusal) as st:
        result = monitor(st, data_dir)
        attempts = len(st.sim.monitors)
    assert result.returncode == 2
    message = one_line(result.stderr)
    assert ("403" if refusal == "http_403" else "1008") in message
    assert "enterprise" in message and KEY not in message
    assert 1 <= attempts <= 3  # the live conversations found by the first poll, then stop
    assert not monitor_lines(data_dir)


def test_wrong_or_missing_key_exits_2(live: SimulatorThread, data_dir: Path) -> None:
    wrong = monitor(live, data_dir, key="sk_wrong")
    assert wrong.returncode == 2 and "401" in one_line(wrong.stderr)
    assert not live.sim.monitors
    missing = monitor(live, data_dir, key=None)
    assert missing.returncode == 2 and "ELEVENLABS_API_KEY" in one_line(missing.stderr)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_monitored_turns_are_in_user_texts_while_it_runs(data_dir: Path) -> None:
    """The live projection runs beside the monitor: a live conversation's turns become rows as they are said."""
    spec = AccountSpec(conversations=2, in_progress=1, processing=0, live_turn_gap=0.2, user_turns=(4, 4))
    with SimulatorThread(api_key=KEY, account=spec) as st:
        assert st.sim.account is not None
        [watched] = st.sim.account.of_agent(AGENT, "in-progress")
        first = watched.user_entries()[0]["message"]
        db = data_dir / "whatsapp_storage.db"
        with running(*monitor_args(st, data_dir), ELEVENLABS_API_KEY=KEY) as proc:
            wait_until(
                lambda: (watched.conversation_id, first, '["monitor"]') in user_texts(db),
                20,
                "a monitored row",
            )
            assert proc.poll() is None
            assert_children_never_saw(proc, KEY)
