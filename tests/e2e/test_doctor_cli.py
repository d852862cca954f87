"""``capture doctor`` as an operator runs it on a new deployment: one line per check, exit 0 only if all pass."""

from __future__ import annotations

from pathlib import Path

from ingest.simulator import SimulatorThread
from tests.e2e.commands import capture


KEY, SECRET = "sk_doctor_cli", "wsec_doctor_cli_0123456789"


def doctor(sim: SimulatorThread, data_dir: Path, *args: str, **env: str) -> tuple[int, list[str], str]:
    result = capture(
        "doctor", "--base-url", sim.http_url, "--data-dir", str(data_dir), *args, **env
    )  # fmt: skip
    return result.returncode, result.stdout.splitlines(), result.stdout + result.stderr


def test_a_sound_deployment_passes_every_check(data_dir: Path) -> None:
    with SimulatorThread(api_key=KEY) as sim:
        assert capture("ingest", "--agent-id", "agent_demo", "--base-url", sim.http_url, "--data-dir",
                       str(data_dir), "--max-conversations", "1", ELEVENLABS_API_KEY=KEY).returncode == 0  # fmt: skip
        code, lines, output = doctor(
            sim, data_dir, "--agent-id", "agent_demo", "--webhook-port", "8080",
            ELEVENLABS_API_KEY=KEY, ELEVENLABS_WEBHOOK_SECRET=SECRET,
        )  # fmt: skip
    assert code == 0, output
    names = [line.split()[1] for line in lines]
    assert names == ["api", "clock", "webhook", "data", "filesystem", "lock", "projection", "duckdb"]
    assert all(line.startswith(("ok ", "warn ")) for line in lines), output
    assert KEY not in output and SECRET not in output


def test_each_mistake_is_its_own_failing_line_and_exit_1(data_dir: Path) -> None:
    """A wrong key, no webhook secret for a webhook port: two FAIL lines, the rest still checked."""
    with SimulatorThread(api_key=KEY) as sim:
        code, lines, output = doctor(
            sim, data_dir, "--agent-id", "agent_demo", "--webhook-port", "8080", ELEVENLABS_API_KEY="sk_wrong"
        )
    assert code == 1
    failed = [line for line in lines if line.startswith("FAIL")]
    assert len(failed) == 2, output
    assert "refused (HTTP 401)" in failed[0]
    assert "ELEVENLABS_WEBHOOK_SECRET is not set" in failed[1]
    assert len(lines) == 8
    assert "sk_wrong" not in output
    assert not data_dir.exists()  # doctor creates nothing
