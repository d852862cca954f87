"""Everything upstream of the projections: the log (``ingest.log``) and its sources (``ingest.sources``).

The names below are the public API; import them from here, e.g.
``from ingest import LogWriter, iter_log``. They load on first use, so that
``import ingest`` stays cheap for a process that needs only the log.

"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ingest.errors import (
    AuthError,
    CaptureError,
    ConfigError,
    LockedError,
    LogCorruptError,
    LogError,
    LogWriteError,
    ProjectionError,
    QueryError,
)


if TYPE_CHECKING:
    from ingest.log import (
        Frame,
        FsyncPolicy,
        LogLine,
        LogStatus,
        LogWriter,
        Origin,
        RotationPolicy,
        decode_line,
        events_dir,
        inspect_frame,
        iter_log,
        log_status,
    )
    from ingest.sources.agent.client import AgentConfig, IngestSummary
    from ingest.sources.monitor import MonitorConfig, run_monitor
    from ingest.sources.relay import RelayConfig, RelayReport, run_relay
    from ingest.sources.rest.backfill import BackfillConfig, run_backfill
    from ingest.sources.run import IngestSettings, ingest
    from ingest.sources.webhook.receiver import WebhookConfig, run_webhook_server

__all__ = [
    "AgentConfig",
    "AuthError",
    "BackfillConfig",
    "CaptureError",
    "ConfigError",
    "Frame",
    "FsyncPolicy",
    "IngestSettings",
    "IngestSummary",
    "LockedError",
    "LogCorruptError",
    "LogError",
    "LogLine",
    "LogStatus",
    "LogWriteError",
    "LogWriter",
    "MonitorConfig",
    "Origin",
    "ProjectionError",
    "QueryError",
    "RelayConfig",
    "RelayReport",
    "RotationPolicy",
    "WebhookConfig",
    "decode_line",
    "events_dir",
    "ingest",
    "inspect_frame",
    "iter_log",
    "log_status",
    "run_backfill",
    "run_monitor",
    "run_relay",
    "run_webhook_server",
]

_LAZY = {
    **dict.fromkeys(
        (
            "Frame",
            "FsyncPolicy",
            "LogLine",
            "LogStatus",
            "LogWriter",
            "Origin",
            "RotationPolicy",
            "decode_line",
            "events_dir",
            "inspect_frame",
            "iter_log",
            "log_status",
        ),
        "ingest.log",
    ),
    "AgentConfig": "ingest.sources.agent.client",
    "IngestSummary": "ingest.sources.agent.client",
    "MonitorConfig": "ingest.sources.monitor",
    "run_monitor": "ingest.sources.monitor",
    "BackfillConfig": "ingest.sources.rest.backfill",
    "run_backfill": "ingest.sources.rest.backfill",
    **dict.fromkeys(("RelayConfig", "RelayReport", "run_relay"), "ingest.sources.relay"),
    "IngestSettings": "ingest.sources.run",
    "ingest": "ingest.sources.run",
    "WebhookConfig": "ingest.sources.webhook.receiver",
    "run_webhook_server": "ingest.sources.webhook.receiver",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ingest' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
