"""Every source inside one ``capture ingest``: one process, one lock, one gap-free log."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from ingest.log.lock import probe_lock
from ingest.log.reader import iter_log
from ingest.log.writer import events_dir
from ingest.simulator import AccountSpec, DeliveryFactory, Scenario, SimulatorThread, send_many
from tests.conftest import TIMEOUT_FACTOR
from tests.e2e.commands import capture, free_port, start, terminate


def sources_in_log(data_dir: Path) -> Counter[str]:
    return Counter(line.source for line in iter_log(events_dir(data_dir)))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_all_sources_share_one_writer(data_dir: Path) -> None:
    """Agent WebSocket, webhooks, REST backfill and monitor write one log in one process; SIGTERM exits 0."""
    key, secret = "sk_one_process", "whsec_one_process"
    port = free_port()
    account = AccountSpec(conversations=6, in_progress=1, processing=0, live_turn_gap=0.05)
    with SimulatorThread(
        api_key=key, account=account, default=Scenario(end="wait"), ping_interval=0.1
    ) as sim:
        proc = start(
            "ingest",
            "--agent-id",
            "agent_demo",
            "--base-url",
            sim.http_url,
            "--data-dir",
            str(data_dir),
            "--webhook-port",
            str(port),
            "--backfill-follow",
            "--backfill-interval",
            "1",
            "--monitor",
            ELEVENLABS_API_KEY=key,
            ELEVENLABS_WEBHOOK_SECRET=secret,
        )
        try:
            url = f"http://127.0.0.1:{port}/webhooks/elevenlabs"
            deadline = time.monotonic() + 20 * TIMEOUT_FACTOR
            statuses: list[int] = []
            while not statuses:
                try:
                    statuses = sim.run(send_many(url, [DeliveryFactory(secret).transcription()]), 10)
                except Exception:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                    time.sleep(0.05)
            assert statuses == [200]
            wanted = {"agent_ws", "webhook", "rest", "monitor"}
            while not wanted <= set(sources_in_log(data_dir)):
                assert time.monotonic() < deadline, f"only {sources_in_log(data_dir)} in the log"
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
            assert probe_lock(data_dir) is not None
            stderr = terminate(proc)
        finally:
            proc.kill()
    assert probe_lock(data_dir) is None
    assert key not in stderr
    lines = list(iter_log(events_dir(data_dir)))
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))
    for path in data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key.encode() not in data and secret.encode() not in data


def test_the_other_sources_stop_when_the_agent_client_is_done(data_dir: Path) -> None:
    """After --max-conversations the webhook receiver stops with the agent client: ingest exits 0 on its own."""
    port = free_port()
    with SimulatorThread() as sim:
        done = capture(
            "ingest", "--agent-id", "agent_demo", "--base-url", sim.http_url, "--data-dir", str(data_dir),
            "--max-conversations", "1", "--webhook-port", str(port), "--no-project",
            ELEVENLABS_WEBHOOK_SECRET="whsec_one_process",
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 conversations" in done.stdout
    assert f"listening on http://127.0.0.1:{port}/" in done.stderr  # it did run beside the agent client
    assert probe_lock(data_dir) is None
