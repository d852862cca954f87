"""``capture webhook`` as a user runs it: the secret, the lock, SIGTERM, the live projection."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from ingest.log.reader import iter_log
from ingest.log.writer import LogWriter, events_dir
from ingest.simulator.webhook_sender import Delivery, DeliveryFactory, send
from tests.conftest import listening_port
from tests.e2e.commands import TIMEOUT, assert_children_never_saw, running, start, user_texts, wait_until


POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SECRET = "wsec_test_0123456789abcdef"


def webhook(data_dir: Path, *args: str) -> list[str]:
    """The arguments of ``capture webhook`` on a free port."""
    return ["webhook", "--port", "0", "--data-dir", str(data_dir), *args]


def post(port: int, delivery: Delivery) -> int:
    async def main() -> int:
        async with aiohttp.ClientSession() as session:
            return await send(session, f"http://127.0.0.1:{port}/webhooks/elevenlabs", delivery)

    return asyncio.run(main())


def test_missing_secret_is_a_config_error(data_dir: Path) -> None:
    """Without ELEVENLABS_WEBHOOK_SECRET: one line naming it, exit 2."""
    proc = start(*webhook(data_dir))
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 2
    assert "ELEVENLABS_WEBHOOK_SECRET" in err
    assert len(err.strip().splitlines()) == 1


def test_a_running_writer_makes_the_command_exit_at_once(data_dir: Path) -> None:
    """While another writer holds the data dir, capture webhook exits 1 with the lock message."""
    with LogWriter.open(data_dir, command="capture ingest"):
        started = time.monotonic()
        proc = start(*webhook(data_dir), ELEVENLABS_WEBHOOK_SECRET=SECRET)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 1
        assert "another capture ingest" in err
        assert "listening" not in err
        assert time.monotonic() - started < TIMEOUT / 4
    assert SECRET not in out + err


@POSIX_ONLY
def test_sigterm_stops_the_command_cleanly(data_dir: Path) -> None:
    """A stored delivery, then SIGTERM: exit 0, the line on disk, the lock released, no secret printed."""
    proc = start(*webhook(data_dir, "--no-project"), ELEVENLABS_WEBHOOK_SECRET=SECRET)
    try:
        delivery = DeliveryFactory(SECRET).transcription()
        assert post(listening_port(proc, TIMEOUT), delivery) == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "1 deliveries stored" in out
    assert SECRET not in out + err
    assert [line.frame for line in iter_log(events_dir(data_dir))] == [delivery.body]
    assert not (data_dir / "whatsapp_storage.db").exists()  # --no-project
    with LogWriter.open(data_dir, command="test"):
        pass  # the lock was released


@POSIX_ONLY
def test_deliveries_are_in_user_texts_while_it_runs(data_dir: Path) -> None:
    """The live projection runs beside the receiver: a delivery's user turns become rows at once.

    The projection is a child process that never sees the webhook secret.
    """
    delivery = DeliveryFactory(SECRET).transcription()
    transcript = orjson.loads(delivery.body)["data"]["transcript"]
    said = {(delivery.conversation_id, e["message"]) for e in transcript if e["role"] == "user"}
    assert said
    with running(*webhook(data_dir), ELEVENLABS_WEBHOOK_SECRET=SECRET) as proc:
        assert post(listening_port(proc, TIMEOUT), delivery) == 200
        db = data_dir / "whatsapp_storage.db"
        wait_until(lambda: {(r[0], r[1]) for r in user_texts(db)} >= said, 20, "the delivery's rows")
        assert proc.poll() is None
        assert_children_never_saw(proc, SECRET)
    assert {r[2] for r in user_texts(db)} == {'["webhook"]'}


@POSIX_ONLY
def test_max_future_bounds_the_clock_skew_it_accepts(data_dir: Path) -> None:
    """By default a delivery signed 10 minutes ahead is stored (as the SDK accepts it); --max-future 60 refuses it."""
    ahead = DeliveryFactory(SECRET, clock=lambda: time.time() + 600)
    with running(*webhook(data_dir, "--no-project"), ELEVENLABS_WEBHOOK_SECRET=SECRET) as proc:
        assert post(listening_port(proc, TIMEOUT), ahead.transcription()) == 200
    with running(
        *webhook(data_dir, "--no-project", "--max-future", "60"), ELEVENLABS_WEBHOOK_SECRET=SECRET
    ) as proc:
        assert post(listening_port(proc, TIMEOUT), ahead.transcription()) == 401
    assert len(list(iter_log(events_dir(data_dir)))) == 1


def test_webhook_limits_are_checked_as_flags(data_dir: Path) -> None:
    """A bad --min-body-rate or --max-future is one line and exit 2."""
    for args in (("--min-body-rate", "fast"), ("--max-future", "-1")):
        proc = start(*webhook(data_dir, *args), ELEVENLABS_WEBHOOK_SECRET=SECRET)
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 2, err
        assert "Traceback" not in err
