"""``capture status``: the figures for a person and, with --json, the documented stable fields; a running writer's live figures."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import orjson
import pytest

from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.writer import LogWriter
from ingest.observe.address import ADDRESS_NAME
from ingest.simulator import Scenario, SimulatorThread
from tests.conftest import REPO_ROOT
from tests.e2e.commands import capture, free_port, running, wait_until
from tests.e2e.test_metrics_cli import fetch


OPTIONAL = {"projection.error", "projection.log_error"}  # present only when something cannot be read


def documented_fields() -> set[str]:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### `capture status`") : readme.index("### `capture doctor`")]
    return set(re.findall(r"^\| `([a-z_.]+)` \|", section, re.M))


def fields(data: dict[str, object]) -> set[str]:
    projection = data["projection"]
    assert isinstance(projection, dict)
    return (set(data) - {"projection"}) | {f"projection.{key}" for key in projection}


def status_json(data_dir: Path) -> dict[str, object]:
    result = capture("status", "--data-dir", str(data_dir), "--json")
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def check_documented(data: dict[str, object]) -> None:
    documented = documented_fields()
    assert fields(data) <= documented, f"undocumented status fields: {fields(data) - documented}"
    assert documented - OPTIONAL <= fields(data), (
        f"documented but missing: {documented - OPTIONAL - fields(data)}"
    )


def test_the_json_fields_are_the_documented_ones(data_dir: Path) -> None:
    with LogWriter.open(data_dir, command="test") as writer:
        writer.append(Origin("agent_ws", "in", "a", "c", "conv"), inspect_frame('{"type":"ping"}'))
    before = status_json(data_dir)["projection"]
    assert isinstance(before, dict)
    assert (before["exists"], before["lag_lines"]) == (False, 1) and before["lag_seconds"] >= 0
    assert capture("project", "--data-dir", str(data_dir)).returncode == 0
    with LogWriter.open(data_dir, command="test") as writer:
        writer.append(Origin("agent_ws", "in", "a", "c", "conv"), inspect_frame('{"type":"ping"}'))
    data = status_json(data_dir)
    check_documented(data)
    assert data["live"] is None and data["writer"] is None
    projection = data["projection"]
    assert isinstance(projection, dict)
    assert (projection["lag_lines"], projection["last_projected_seq"]) == (1, 1)
    assert projection["lag_seconds"] > 0


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_running_writer_with_metrics_shows_its_live_figures(data_dir: Path) -> None:
    metrics = free_port()
    with SimulatorThread(default=Scenario(end="wait"), ping_interval=0.1) as sim:
        with running(
            "ingest", "--agent-id", "agent_demo", "--base-url", sim.http_url, "--data-dir", str(data_dir),
            "--metrics-port", str(metrics),
        ):  # fmt: skip
            wait_until(lambda: fetch(metrics, "/readyz")[0] == 200, 30, "ready")
            assert (data_dir / ADDRESS_NAME).exists()
            key = 'capture_frames_logged_total{direction="in",source="agent_ws",type="conversation_initiation_metadata"}'

            def counted() -> bool:  # by the tally's process, a second or so behind
                live = status_json(data_dir)["live"]
                return isinstance(live, dict) and key in (live["metrics"] or {})

            wait_until(counted, 30, "the frames counted by type")
            data = status_json(data_dir)
            check_documented(data)
            live = data["live"]
            assert isinstance(live, dict)
            assert (
                live["url"] == f"http://127.0.0.1:{metrics}"
                and live["ready"] is True
                and live["error"] is None
            )
            assert live["checks"][0].startswith("ok agent_ws")
            assert live["metrics"]["capture_agent_connected"] == 1.0
            assert live["metrics"][key] >= 1
            assert not any(
                name.endswith("_bucket") or not name.startswith("capture_") for name in live["metrics"]
            )
            shown = capture("status", "--data-dir", str(data_dir))
            assert shown.returncode == 0
            assert f"http://127.0.0.1:{metrics}" in shown.stdout
            assert "live capture_agent_connected" in shown.stdout and "ok agent_ws" in shown.stdout
    assert not (data_dir / ADDRESS_NAME).exists()  # removed as it stopped
    assert status_json(data_dir)["live"] is None


def test_a_stale_address_left_by_a_killed_writer_is_ignored(data_dir: Path) -> None:
    with LogWriter.open(data_dir, command="test"):
        pass
    (data_dir / ADDRESS_NAME).write_bytes(orjson.dumps({"pid": 12345, "url": "http://127.0.0.1:1"}))
    assert status_json(data_dir)["live"] is None
