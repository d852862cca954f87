"""The metrics endpoint inside a real run: real sources on the simulator, scraped over HTTP on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.errors import ConfigError, LogWriteError
from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.writer import LogWriter
from ingest.observe.figures import ProjectionFigures
from ingest.observe.health import ReadinessPolicy
from ingest.observe.server import MetricsConfig, MetricsServer
from ingest.observe.watch import Watched
from ingest.simulator import DeliveryFactory, Scenario, Signing, Simulator, send
from ingest.sources import (
    AgentConfig,
    IngestSummary,
    LogSettings,
    ReconnectPolicy,
    WebhookConfig,
    WebhookStats,
    run_agent,
    run_sources,
    run_webhook_server,
)
from tests.conftest import TIMEOUT_FACTOR


TIMEOUT = 20 * TIMEOUT_FACTOR
SECRET = "wsec_metrics_0123456789"
FAST = ReconnectPolicy(
    initial_delay=0.05, min_delay=0.05, max_delay=0.2, healthy_after=0.2, normal_pause=0.05
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


async def until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def run(coroutine: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, 3 * TIMEOUT)

    return asyncio.run(bounded())


def test_a_scrape_shows_the_sources_counters_and_the_frames_by_type(data_dir: Path) -> None:
    """Agent socket and webhook in one run: frames by type, deliveries by outcome, the writer, the pongs."""

    async def main() -> None:
        async with Simulator(default=Scenario(end="wait"), ping_interval=0.05) as sim:
            watched = Watched(agent=IngestSummary(), webhook=WebhookStats())
            metrics = MetricsServer(MetricsConfig(port=0), watched)
            webhook_port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            agent = AgentConfig("agent_demo", sim.http_url)
            stop = asyncio.Event()

            async def agent_source(writer: LogWriter, stop: asyncio.Event) -> object:
                return await run_agent(writer, agent, stop, policy=FAST, summary=watched.agent)

            async def webhook_source(writer: LogWriter, stop: asyncio.Event) -> object:
                config = WebhookConfig(secret=SECRET, port=0, max_body=64 * 1024)
                return await run_webhook_server(
                    writer, config, stop, stats=watched.webhook, on_ready=webhook_port.set_result
                )

            running = asyncio.create_task(
                run_sources(
                    [agent_source, webhook_source],
                    LogSettings(data_dir),
                    stop=stop,
                    handle_signals=False,
                    observer=metrics,
                )
            )
            url = f"http://127.0.0.1:{await webhook_port}/webhooks/elevenlabs"
            factory = DeliveryFactory(SECRET)
            async with aiohttp.ClientSession() as session:
                assert await send(session, url, factory.transcription()) == 200
                assert await send(session, url, factory.transcription(signing=Signing.WRONG_SECRET)) == 401
                assert await send(session, url, factory.transcription(signing=Signing.STALE)) == 401
                async with session.post(
                    url,
                    data=b"x" * (65 * 1024),
                    headers={"ElevenLabs-Signature": f"t={int(time.time())},v0=00"},
                ) as response:
                    assert response.status == 413
            assert metrics.port is not None
            port = metrics.port

            async def pinged() -> bool:
                assert watched.agent is not None
                return watched.agent.pong_seconds.count >= 2 and watched.agent.connected

            await until(pinged, "two pongs")

            async def tallied() -> bool:
                # The frames by type are counted by a process of their own, a second or so behind.
                samples = parse((await get(port, "/metrics"))[1])
                return (
                    "capture_frames_logged_total",
                    (("direction", "in"), ("source", "webhook"), ("type", "post_call_transcription")),
                ) in samples and value(
                    samples, "capture_frames_logged_total", source="agent_ws", direction="in", type="ping"
                ) >= 2

            await until(tallied, "the frames counted by type")
            status, text = await get(port, "/metrics")
            assert status == 200
            samples = parse(text)
            assert (
                value(
                    samples,
                    "capture_frames_logged_total",
                    source="agent_ws",
                    direction="in",
                    type="conversation_initiation_metadata",
                )
                == 1
            )
            assert (
                value(
                    samples,
                    "capture_frames_logged_total",
                    source="agent_ws",
                    direction="out",
                    type="conversation_initiation_client_data",
                )
                == 1
            )
            assert (
                value(samples, "capture_frames_logged_total", source="agent_ws", direction="in", type="ping")
                >= 2
            )
            assert (
                value(
                    samples,
                    "capture_frames_logged_total",
                    source="webhook",
                    direction="in",
                    type="post_call_transcription",
                )
                == 1
            )
            assert value(samples, "capture_webhook_deliveries_total", code="200", outcome="stored") == 1
            rejected = sum(
                v
                for (name, labels), v in samples.items()
                if name == "capture_webhook_deliveries_total" and ("code", "401") in labels
            )
            assert rejected == 2
            assert value(samples, "capture_webhook_deliveries_total", code="413", outcome="too_large") == 1
            assert value(samples, "capture_agent_connected") == 1
            assert value(samples, "capture_agent_pong_latency_seconds_count") >= 2
            assert value(samples, "capture_agent_pong_latency_seconds_bucket", le="+Inf") == value(
                samples, "capture_agent_pong_latency_seconds_count"
            )
            assert value(samples, "capture_log_lines_total") >= sum(
                v for (name, _), v in samples.items() if name == "capture_frames_logged_total"
            )
            assert (
                value(samples, "capture_log_fsync_duration_seconds_count") >= 1
            )  # the webhook's durable ack
            assert value(samples, "capture_webhook_listening") == 1
            assert value(samples, "capture_ready", check="agent_ws") == 1
            assert ("process_resident_memory_bytes", ()) in samples or os.name == "nt"
            status, text = await get(port, "/healthz")
            assert (status, text.split(",")[0]) == (200, "ok log: writable")
            status, text = await get(port, "/readyz")
            assert status == 200, text
            assert "ok agent_ws: connected" in text and "ok webhook: listening" in text
            stop.set()
            await running
            assert metrics.port is not None
            with pytest.raises(aiohttp.ClientConnectionError):
                await get(port, "/healthz")  # closed with the run

    run(main())


def test_readiness_fails_for_a_source_down_too_long_and_a_projection_behind(data_dir: Path) -> None:
    """A refusing platform keeps the agent down past its bound, and a projection stuck at 0 lags: 503, one line each."""

    async def main() -> None:
        async with Simulator(default=Scenario(fault="http_503")) as sim:
            watched = Watched(agent=IngestSummary(), projection=lambda: ProjectionFigures(position=0))
            policy = ReadinessPolicy(agent_down=0.2, max_projection_lag=0.2)
            metrics = MetricsServer(MetricsConfig(port=0, readiness=policy), watched)
            agent = AgentConfig("agent_demo", sim.http_url)
            stop = asyncio.Event()

            async def agent_source(writer: LogWriter, stop: asyncio.Event) -> object:
                writer.append(Origin("test", "in", None, None, None), inspect_frame('{"type":"ping"}'))
                return await run_agent(writer, agent, stop, policy=FAST, summary=watched.agent)

            running = asyncio.create_task(
                run_sources(
                    [agent_source], LogSettings(data_dir), stop=stop, handle_signals=False, observer=metrics
                )
            )

            async def unready() -> bool:
                if metrics.port is None:
                    return False
                status, text = await get(metrics.port, "/readyz")
                return status == 503 and "fail agent_ws" in text and "fail projection" in text

            await until(unready, "a failing /readyz")
            _, text = await get(metrics.port or 0, "/readyz")
            assert "fail agent_ws: not connected for" in text
            assert "fail projection: 1 lines behind, the oldest waiting" in text
            samples = parse((await get(metrics.port or 0, "/metrics"))[1])
            assert value(samples, "capture_ready", check="agent_ws") == 0
            assert value(samples, "capture_projection_lag_lines") == 1
            assert value(samples, "capture_projection_lag_seconds") > 0.2
            assert value(samples, "capture_agent_reconnects_total", reason="http_5xx") >= 1
            assert (await get(metrics.port or 0, "/healthz"))[0] == 200  # unready is not unhealthy
            stop.set()
            await running

    run(main())


def test_health_fails_once_the_log_cannot_be_written(data_dir: Path) -> None:
    """A failed write makes the writer unusable: /healthz answers 503 with the error, while the run stops."""

    async def main() -> None:
        watched = Watched()
        metrics = MetricsServer(MetricsConfig(port=0), watched)
        checked: list[tuple[int, str]] = []

        async def breaking(writer: LogWriter, stop: asyncio.Event) -> None:
            assert metrics.port is not None
            assert (await get(metrics.port, "/healthz"))[0] == 200
            segment = writer.active_segment
            assert segment is not None
            fd = os.open(segment, os.O_RDONLY)  # the writer's fd replaced by a read-only one
            os.dup2(fd, writer._active.fd)  # type: ignore[union-attr]
            os.close(fd)
            with pytest.raises(LogWriteError):
                writer.append(Origin("test", "in", None, None, None), inspect_frame('{"type":"ping"}'))
            checked.append(await get(metrics.port, "/healthz"))
            await get(metrics.port, "/metrics")

        with pytest.raises(LogWriteError):
            await run_sources([breaking], LogSettings(data_dir), handle_signals=False, observer=metrics)
        status, text = checked[0]
        assert status == 503
        assert text.startswith("fail log: writing") and "failed" in text

    run(main())


def test_two_runs_in_one_process_have_registries_of_their_own(tmp_path: Path) -> None:
    async def main() -> None:
        servers = [MetricsServer(MetricsConfig(port=0), Watched()) for _ in range(2)]

        async def scrape(writer: LogWriter, stop: asyncio.Event) -> float:
            writer.append(Origin("test", "in", None, None, None), inspect_frame('{"type":"ping"}'))
            server = servers[0] if writer.data_dir.name == "a" else servers[1]
            return value(parse((await get(server.port or 0, "/metrics"))[1]), "capture_log_lines_total")

        reports = await asyncio.gather(
            *(
                run_sources([scrape], LogSettings(tmp_path / name), handle_signals=False, observer=server)
                for name, server in zip("ab", servers, strict=True)
            )
        )
        assert reports == [[1.0], [1.0]]

    run(main())


def test_a_port_in_use_is_a_config_error_and_the_log_is_closed(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def never(writer: LogWriter, stop: asyncio.Event) -> None:
            raise AssertionError("no source starts when the metrics endpoint cannot")

        metrics = MetricsServer(MetricsConfig(port=port), Watched())
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port} for metrics"):
            run(run_sources([never], LogSettings(data_dir), handle_signals=False, observer=metrics))
    with LogWriter.open(data_dir, command="test"):
        pass  # the lock was released
