"""The sources that fill the log, and the one lifecycle that runs any set of them on one writer.

Each source is a coroutine function ``(writer, config, stop) -> report``;
bind its config and hand it to :func:`run_sources` (or :func:`run_source`)::

    from ingest.sources import LogSettings, WebhookConfig, run_source, run_webhook_server

    config = WebhookConfig(secret=secret, port=8080)
    stats = await run_source(lambda writer, stop: run_webhook_server(writer, config, stop),
                             LogSettings(data_dir))

"""

from __future__ import annotations

from ingest.sources.agent.client import AgentConfig, IngestSummary, run_agent
from ingest.sources.monitor import MonitorConfig, MonitorReport, run_monitor
from ingest.sources.reconnect import ReconnectPolicy
from ingest.sources.relay import RelayConfig, RelayReport, run_relay
from ingest.sources.rest.backfill import BackfillConfig, BackfillReport, run_backfill
from ingest.sources.run import LogSettings, Sidecar, Source, run_source, run_sources
from ingest.sources.webhook.receiver import WebhookConfig, WebhookStats, run_webhook_server


__all__ = [
    "AgentConfig",
    "BackfillConfig",
    "BackfillReport",
    "IngestSummary",
    "LogSettings",
    "MonitorConfig",
    "MonitorReport",
    "ReconnectPolicy",
    "RelayConfig",
    "RelayReport",
    "Sidecar",
    "Source",
    "WebhookConfig",
    "WebhookStats",
    "run_agent",
    "run_backfill",
    "run_monitor",
    "run_relay",
    "run_source",
    "run_sources",
    "run_webhook_server",
]
