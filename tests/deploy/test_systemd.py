"""deploy/capture.service: verified by systemd, hardened, and its ExecStart run as written, stopping in time."""

from __future__ import annotations

import inspect
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from ingest.observe.tally_process import TallyProcess
from ingest.simulator import AccountSpec, SimulatorThread
from ingest.sources.relay.config import RelayConfig
from ingest.sources.webhook.receiver import WebhookConfig
from projections.live import LiveProjection
from tests.conftest import REPO_ROOT, subprocess_env
from tests.e2e.commands import free_port, wait_until
from tests.e2e.test_metrics_cli import fetch


UNIT = REPO_ROOT / "deploy" / "capture.service"
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd units are Linux's")

# The agent client's and the monitor's websockets close_timeout (a literal in their connect calls).
SOCKET_CLOSE_TIMEOUT = 5.0
# The metrics endpoint's own shutdown timeout and its tally process', and the final fsync of a
# saturated disk.
METRICS_SHUTDOWN, FINAL_FSYNC = 1.0 + inspect.signature(TallyProcess.close).parameters["timeout"].default, 5.0


def unit(text: str | None = None) -> dict[str, dict[str, list[str]]]:
    """The unit's settings: section -> key -> every value given (systemd allows repeats)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in (text if text is not None else UNIT.read_text()).splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


def one(section: str, key: str) -> str:
    values = unit()[section][key]
    assert len(values) == 1, f"{key}= in [{section}]: {values}"
    return values[0]


def exec_start() -> list[str]:
    return shlex.split(one("Service", "ExecStart"))


def worst_case_stop() -> float:
    """The longest a SIGTERM'd capture can take, from the code's own timeouts."""
    relay = RelayConfig(agent_ids=["agent_x"], base_url="https://api.elevenlabs.io")
    sources = max(
        SOCKET_CLOSE_TIMEOUT, WebhookConfig(secret="x").shutdown_timeout, 2 * relay.shutdown_timeout
    )
    projection = inspect.signature(LiveProjection.stop).parameters["timeout"].default + 2.0
    return sources + METRICS_SHUTDOWN + FINAL_FSYNC + projection


@LINUX
def test_systemd_analyze_verify_says_nothing() -> None:
    """`systemd-analyze verify` on the unit, its ExecStart pointed at this venv's capture: no output at all."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/run installs systemd")
        pytest.skip("systemd-analyze is not installed")
    script = Path(sys.executable).with_name("capture")
    assert script.exists(), "the venv's capture script"
    text = UNIT.read_text().replace(exec_start()[0], str(script))
    assert str(script) in text
    copy = Path(os.environ.get("TMPDIR", "/tmp")) / f"capture-{os.getpid()}.service"
    copy.write_text(text)
    try:
        result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    finally:
        copy.unlink()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_it_runs_as_its_own_user_with_the_secrets_in_an_environment_file() -> None:
    assert one("Service", "User") == "capture"
    assert one("Service", "Group") == "capture"
    assert one("Service", "EnvironmentFile").startswith("/etc/capture/")
    assert "ELEVENLABS_API_KEY" not in one("Service", "ExecStart")
    assert "Environment" not in unit()["Service"]  # no secret inline in the unit


def test_it_restarts_on_failure_within_a_start_limit_but_not_for_a_setting_to_fix() -> None:
    assert one("Service", "Restart") == "on-failure"
    assert int(one("Unit", "StartLimitBurst")) >= 1
    assert int(one("Unit", "StartLimitIntervalSec")) >= 60
    assert one("Service", "RestartPreventExitStatus") == "2"


def test_its_stop_timeout_covers_captures_worst_case_stop() -> None:
    assert one("Service", "KillSignal") == "SIGTERM"
    # SIGTERM to capture alone: it stops its live projection itself once everything is applied.
    assert one("Service", "KillMode") == "mixed"
    timeout = float(one("Service", "TimeoutStopSec"))
    assert timeout >= worst_case_stop() + 5, (timeout, worst_case_stop())


def test_it_is_hardened_and_writes_only_its_data_dir() -> None:
    service = unit()["Service"]
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "PrivateDevices": "yes",
        "RestrictSUIDSGID": "yes",
    }.items():
        assert service[key] == [value], key
    assert service["CapabilityBoundingSet"] == [""]
    args = exec_start()
    data_dir = args[args.index("--data-dir") + 1]
    assert service["ReadWritePaths"] == [data_dir]
    assert service["StateDirectory"] == [Path(data_dir).name] and data_dir.startswith("/var/lib/")


@LINUX
def test_its_exec_start_runs_and_stops_within_its_timeout(tmp_path: Path) -> None:
    """The command line exactly as the unit has it (its binary, data dir and ports moved), then SIGTERM."""
    args = exec_start()
    args[0] = str(Path(sys.executable).with_name("capture"))
    moved = {
        "--data-dir": str(tmp_path / "data"),
        "--webhook-port": str(free_port()),
        "--metrics-port": str(free_port()),
    }
    for flag, value in moved.items():
        args[args.index(flag) + 1] = value
    metrics = int(moved["--metrics-port"])
    key = "sk_unit_test"
    with SimulatorThread(api_key=key, account=AccountSpec(conversations=3, processing=0)) as sim:
        env = subprocess_env(
            ELEVENLABS_API_KEY=key,
            ELEVENLABS_WEBHOOK_SECRET="wsec_unit_test_0123456789",
            AGENT_ID="agent_demo",
            ELEVENLABS_BASE_URL=sim.http_url,
        )
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: fetch(metrics, "/readyz")[0] == 200 or proc.poll() is not None, 30, "ready")
            assert proc.poll() is None, proc.communicate()
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=float(one("Service", "TimeoutStopSec")))
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and key not in err
    assert took < worst_case_stop()


def test_the_documented_stop_time_matches_the_code() -> None:
    """The unit's comment states the worst case the test computes."""
    match = re.search(r"about (\d+) s\.", UNIT.read_text())
    assert match is not None
    assert abs(float(match.group(1)) - worst_case_stop()) <= 5
