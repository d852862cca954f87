"""The CLI as a newcomer meets it (issue 12 §6): the README's commands, Ctrl-C, encodings, the process log."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.writer import FsyncPolicy, LogWriter
from ingest.simulator.server import Scenario, SimulatorThread
from tests.conftest import capture_command, subprocess_env
from tests.e2e.commands import TIMEOUT, capture, free_port, one_line, running, start, wait_until
from tests.e2e.test_ingest_cli import ingest_args
from tests.ingest.sources.rest.test_backfill import AGENT, KEY, account
from tests.projections.test_duckdb_views import sample_log


POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

#: The reconnect timing a user gets (the tests' fast timing would hide how a short conversation is read).
README_TIMING = {
    "CAPTURE_BACKOFF_INITIAL_DELAY": "1",
    "CAPTURE_BACKOFF_MIN_DELAY": "1",
    "CAPTURE_BACKOFF_MAX_DELAY": "60",
    "CAPTURE_HEALTHY_AFTER": "10",
}


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def simulating(*args: str) -> Iterator[str]:
    """Run ``capture simulate *args`` (as the README does) for the block; yield its base URL."""
    port = free_port()
    with running("simulate", "--port", str(port), *args):
        wait_until(lambda: _listening(port), 30, "the simulator to listen")
        yield f"http://127.0.0.1:{port}"


def test_the_readme_example_holds_normal_conversations_without_warnings(data_dir: Path) -> None:
    """`capture simulate` then `capture ingest --max-conversations 6`: six conversations, each said
    once when it connects, none called failed (a short conversation with user turns is a normal one)."""
    with simulating() as url:
        result = capture(
            "ingest",
            "--base-url",
            url,
            "--agent-id",
            "agent_demo",
            "--max-conversations",
            "6",
            "--data-dir",
            str(data_dir),
            "--no-project",
            **README_TIMING,
        )
    assert result.returncode == 0, result.stderr
    assert "failed" not in result.stderr and "WARNING" not in result.stderr, result.stderr
    assert result.stderr.count("connected (agent agent_demo)") == 6
    assert result.stderr.count(" ended after ") == 6
    assert "6 conversations" in result.stdout


def test_simulate_serves_a_small_account(data_dir: Path) -> None:
    """`capture simulate --account 2` serves two conversations (it crashed with a traceback)."""
    with simulating("--account", "2") as url:
        result = capture(
            "backfill",
            "--base-url",
            url,
            "--agent-id",
            "agent_demo",
            "--data-dir",
            str(data_dir),
            ELEVENLABS_API_KEY="any key: the simulator's agents are public",
        )
    assert result.returncode == 0, result.stderr
    assert "2 conversations listed, 2 logged" in result.stdout
    refused = capture("simulate", "--port", "0", "--account", "2", "--in-progress", "3")
    assert refused.returncode == 2 and "--in-progress" in one_line(refused.stderr)


def test_version() -> None:
    result = capture("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("capture ") and result.stdout.split()[1][0].isdigit()


def test_the_demo_writes_utf8_whatever_the_code_page(tmp_path: Path) -> None:
    """Redirected on Windows, stdout is cp1252 (emulated): the demo's own 🙏 is written as UTF-8."""
    proc = subprocess.run(
        [*capture_command(), "demo", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        env=subprocess_env(PYTHONIOENCODING="cp1252"),
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    out = proc.stdout.decode("utf-8")
    assert "Obrigado! 🙏" in out and "demo-joão" in out
    status = subprocess.run(
        [*capture_command(), "status", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        env=subprocess_env(PYTHONIOENCODING="cp1252"),
        timeout=TIMEOUT,
    )
    assert status.returncode == 0


def test_status_speaks_in_words(tmp_path: Path) -> None:
    """No True, {}, None: yes/no, none, -."""
    data_dir = tmp_path / "data"
    sample_log(data_dir)
    before = capture("status", "--data-dir", str(data_dir))
    assert before.returncode == 0, before.stderr
    assert "projection exists  " in before.stdout and " no" in before.stdout
    assert capture("project", "--data-dir", str(data_dir)).returncode == 0
    after = capture("status", "--data-dir", str(data_dir)).stdout
    for python in ("True", "False", "None", "{}", "[]"):
        assert python not in after
    assert "projection skipped" in after and "duplicate_turn: " in after
    assert "projection lag lines" in after
    assert orjson.loads(capture("status", "--json", "--data-dir", str(data_dir)).stdout)["projection"][
        "exists"
    ]


# -- Ctrl-C ----------------------------------------------------------------------------


@POSIX_ONLY
@account(conversations=60, processing=0, rest_latency=0.2)
def test_ctrl_c_stops_a_one_shot_backfill_with_130_and_says_it_resumes(
    simulator: SimulatorThread, data_dir: Path
) -> None:
    proc = start(
        "backfill",
        "--agent-id",
        AGENT,
        "--base-url",
        simulator.http_url,
        "--data-dir",
        str(data_dir),
        "--concurrency",
        "1",
        "--no-project",
        ELEVENLABS_API_KEY=KEY,
    )
    wait_until(
        lambda: sum(r.kind == "get" for r in simulator.sim.rest_requests) >= 2, 30, "the first fetches"
    )
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted; run it again to resume" in err
    assert "conversations listed" in out


@account(conversations=5, processing=0)
def test_a_backfill_that_lists_nothing_hints_at_the_agent_id(
    simulator: SimulatorThread, data_dir: Path
) -> None:
    result = capture(
        "backfill",
        "--agent-id",
        "agent_misspelled",
        "--base-url",
        simulator.http_url,
        "--data-dir",
        str(data_dir),
        "--no-project",
        ELEVENLABS_API_KEY=KEY,
    )
    assert result.returncode == 0, result.stderr
    assert "0 conversations listed" in result.stdout
    assert "check --agent-id" in result.stderr.splitlines()[-1]


def _in_its_own_group(*args: str) -> subprocess.Popen[str]:
    """Start ``capture *args`` as a terminal would run it: its own process group, which Ctrl-C signals whole."""
    return subprocess.Popen(
        [*capture_command(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        start_new_session=True,
    )


def _ctrl_c(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Ctrl-C as a terminal sends it (SIGINT to the process group: the command and its children)."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _append_user_turns(data_dir: Path, count: int) -> None:
    with LogWriter.open(data_dir, fsync=FsyncPolicy.NEVER) as writer:
        for n in range(count):
            origin = Origin("agent_ws", "in", "agent_x", f"conn-{n // 100}", f"conv_more_{n // 100}")
            said = f'{{"type":"user_transcript","user_transcription_event":{{"user_transcript":"turn {n}","event_id":{n}}}}}'
            writer.append(origin, inspect_frame(said))


@POSIX_ONLY
def test_ctrl_c_during_a_rebuild_is_one_line_130_and_the_table_stays(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sample_log(data_dir)
    assert capture("project", "--data-dir", str(data_dir)).returncode == 0
    db = data_dir / "whatsapp_storage.db"
    rows_before = sqlite3.connect(db).execute("SELECT count(*) FROM user_texts").fetchone()
    _append_user_turns(data_dir, 150_000)  # a rebuild of seconds
    proc = _in_its_own_group("rebuild", "--data-dir", str(data_dir))
    scratch = db.with_name(db.name + ".rebuild")
    wait_until(lambda: scratch.exists() or proc.poll() is not None, 30, "the rebuild to start")
    _, err = _ctrl_c(proc)
    assert proc.returncode == 130, err
    assert one_line(err) == "interrupted; the table was not replaced"
    assert sqlite3.connect(db).execute("SELECT count(*) FROM user_texts").fetchone() == rows_before
    assert not scratch.exists()


@POSIX_ONLY
@pytest.mark.parametrize("command", [["project"], ["status"], ["sql", "SELECT count(*) FROM events"]])
def test_ctrl_c_anywhere_else_is_never_a_traceback(tmp_path: Path, command: list[str]) -> None:
    """Whenever it lands (starting up, working, printing): exit 130 or a finished run, never a traceback."""
    data_dir = tmp_path / "data"
    sample_log(data_dir)
    _append_user_turns(data_dir, 20_000)
    for delay in (0.3, 0.6, 1.0):
        proc = _in_its_own_group(*command, "--data-dir", str(data_dir))
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            pass
        _, err = _ctrl_c(proc) if proc.poll() is None else proc.communicate()
        # Killed by the signal itself when it lands as the interpreter exits
        # (its handlers are gone by then): a shell sees 130 either way.
        assert proc.returncode in (0, 130, -signal.SIGINT), err
        assert "Traceback" not in err and "Exception" not in err, err


@POSIX_ONLY
def test_ctrl_c_stops_ingest_cleanly_with_0(data_dir: Path) -> None:
    """A command that runs until stopped: Ctrl-C is its normal stop (close 1000, fsync, exit 0),
    the live projection beside it included."""
    with SimulatorThread(default=Scenario(end="wait"), ping_interval=0.05) as sim:
        proc = _in_its_own_group(
            "ingest", "--agent-id", "agent_demo", "--base-url", sim.http_url, "--data-dir", str(data_dir)
        )
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert "connected (agent agent_demo)" in first, first
        _, err = _ctrl_c(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "capture is stopping" in err


# -- the process log --------------------------------------------------------------------


@pytest.mark.parametrize("verbosity", ["-v", "-vv"])
def test_verbose_never_shows_a_signature_or_a_key(data_dir: Path, verbosity: str) -> None:
    """Issue 11 §6: -v is capture's detail, -vv the libraries' (websockets' frames), and neither
    prints the signed URL's conversation_signature or the API key."""
    key = "sk_test_never_shown_0123456789"
    with SimulatorThread(api_key=key) as sim:
        result = capture(
            *ingest_args(data_dir, sim.http_url, "--max-conversations", "1", verbosity),
            ELEVENLABS_API_KEY=key,
        )
        tokens = [c.path.split("conversation_signature=")[1].split("&")[0] for c in sim.sim.connections]
    assert result.returncode == 0, result.stderr
    assert tokens and all(token for token in tokens)
    err = result.stderr
    assert "connecting to ws://" in err and "conversation_signature=<redacted>" in err
    for secret in (key, *tokens):
        assert secret not in err and secret not in result.stdout
    library_detail = "< TEXT" in err or "> TEXT" in err
    assert library_detail == (verbosity == "-vv")


def test_quiet_shows_only_warnings(data_dir: Path) -> None:
    with SimulatorThread() as sim:
        result = capture(*ingest_args(data_dir, sim.http_url, "--max-conversations", "1", "-q"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "1 conversations" in result.stdout
