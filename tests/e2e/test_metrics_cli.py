"""``--metrics-port`` as an operator uses it: real commands scraped over HTTP on loopback."""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.simulator import AccountSpec, DeliveryFactory, Scenario, Signing, SimulatorThread, send_many
from tests.e2e.commands import capture, free_port, one_line, running, wait_until


POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

KEY, SECRET = "sk_metrics_cli", "wsec_metrics_cli_0123456789"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fetch(port: int, path: str) -> tuple[int, str]:
    """GET a path of the metrics endpoint: (status, body); (0, why) when nothing answers yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def scrape(port: int) -> Samples:
    status, text = fetch(port, "/metrics")
    assert status == 200, text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


@POSIX_ONLY
def test_one_ingest_with_every_source_is_scraped_while_it_runs(data_dir: Path) -> None:
    """Agent socket, webhook and REST in one `capture ingest --metrics-port`: their figures, ready, then SIGTERM."""
    metrics, webhook = free_port(), free_port()
    account = AccountSpec(conversations=5, processing=0)
    with SimulatorThread(
        api_key=KEY, account=account, default=Scenario(end="wait"), ping_interval=0.1
    ) as sim:
        with running(
            "ingest", "--agent-id", "agent_demo", "--base-url", sim.http_url, "--data-dir", str(data_dir),
            "--webhook-port", str(webhook), "--backfill-follow", "--backfill-interval", "1",
            "--metrics-port", str(metrics),
            ELEVENLABS_API_KEY=KEY, ELEVENLABS_WEBHOOK_SECRET=SECRET,
        ) as proc:  # fmt: skip
            wait_until(lambda: fetch(metrics, "/readyz")[0] == 200 or proc.poll() is not None, 30, "ready")
            assert proc.poll() is None
            factory = DeliveryFactory(SECRET)
            url = f"http://127.0.0.1:{webhook}/webhooks/elevenlabs"
            deliveries = [factory.transcription(), factory.transcription(signing=Signing.TAMPERED)]
            assert sim.run(send_many(url, deliveries), 10) == [200, 401]
            wait_until(
                lambda: (
                    total(scrape(metrics), "capture_frames_logged_total", source="rest") >= 5
                    and total(scrape(metrics), "capture_agent_pong_latency_seconds_count") >= 1
                ),
                30,
                "the backfill's conversations and a pong",
            )
            samples = scrape(metrics)
            assert total(samples, "capture_webhook_deliveries_total", code="200", outcome="stored") == 1
            assert total(samples, "capture_webhook_deliveries_total", code="401") == 1
            assert total(samples, "capture_frames_logged_total", source="rest", type="none") >= 5
            assert (
                total(
                    samples, "capture_frames_logged_total", source="webhook", type="post_call_transcription"
                )
                == 1
            )
            assert total(samples, "capture_rest_requests_total", client="backfill") >= 6
            assert total(samples, "capture_backfill_conversations_total", outcome="logged") >= 5
            assert total(samples, "capture_agent_connected") == 1
            wait_until(lambda: total(scrape(metrics), "capture_projection_rows") > 0, 30, "rows")
            samples = scrape(metrics)
            assert total(samples, "capture_projection_position") > 0
            assert total(samples, "capture_projection_up") == 1
            status, text = fetch(metrics, "/readyz")
            assert status == 200, text
            assert [line.split(":")[0] for line in text.splitlines()] == [
                "ok agent_ws", "ok webhook", "ok backfill", "ok projection",
            ]  # fmt: skip
            assert fetch(metrics, "/healthz")[0] == 200
    assert fetch(metrics, "/healthz")[0] == 0  # gone with the process


@POSIX_ONLY
@pytest.mark.parametrize("command", ["webhook", "relay", "monitor", "backfill"])
def test_every_standalone_writing_command_serves_metrics(command: str, data_dir: Path) -> None:
    metrics = free_port()
    account = AccountSpec(conversations=2, in_progress=1, processing=0)
    with SimulatorThread(api_key=KEY, account=account) as sim:
        args = {
            "webhook": ["webhook", "--port", "0"],
            "relay": ["relay", "--agent-id", "agent_demo", "--port", "0", "--base-url", sim.http_url],
            "monitor": ["monitor", "--agent-id", "agent_demo", "--base-url", sim.http_url, "--poll-interval", "0.1"],
            "backfill": ["backfill", "--agent-id", "agent_demo", "--base-url", sim.http_url, "--follow", "--interval", "0.2"],
        }[command]  # fmt: skip
        with running(
            *args, "--data-dir", str(data_dir), "--metrics-port", str(metrics),
            ELEVENLABS_API_KEY=KEY, ELEVENLABS_WEBHOOK_SECRET=SECRET,
        ):  # fmt: skip
            wait_until(lambda: fetch(metrics, "/readyz")[0] == 200, 30, f"capture {command} ready")
            samples = scrape(metrics)
            name = {
                "webhook": "capture_webhook_listening",
                "relay": "capture_relay_listening",
                "monitor": "capture_monitor_polls_total",
                "backfill": "capture_backfill_passes_total",
            }[command]
            assert total(samples, name) >= 1
            assert total(samples, "capture_log_writable") == 1


def test_a_metrics_port_in_use_is_one_line_and_exit_2(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = capture(
            "webhook", "--port", "0", "--data-dir", str(data_dir), "--metrics-port", str(port),
            ELEVENLABS_WEBHOOK_SECRET=SECRET,
        )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port} for metrics" in one_line(result.stderr)


def test_without_the_flag_nothing_listens(data_dir: Path) -> None:
    """Metrics are off by default: a run of ingest opens no port but the ones asked for."""
    with SimulatorThread() as sim:
        result = capture(
            "ingest", "--agent-id", "agent_demo", "--base-url", sim.http_url, "--data-dir", str(data_dir),
            "--max-conversations", "1", "--no-project", "-v",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "metrics on" not in result.stderr
