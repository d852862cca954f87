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
    from ingest.sources import (
        AgentConfig,
        BackfillConfig,
        BackfillReport,
        IngestSummary,
        LogSettings,
        MonitorConfig,
        MonitorReport,
        RelayConfig,
        RelayReport,
        Sidecar,
        Source,
        WebhookConfig,
        WebhookStats,
        run_agent,
        run_backfill,
        run_monitor,
        run_relay,
        run_source,
        run_sources,
        run_webhook_server,
    )

__all__ = [
    "AgentConfig",
    "AuthError",
    "BackfillConfig",
    "BackfillReport",
    "CaptureError",
    "ConfigError",
    "Frame",
    "FsyncPolicy",
    "IngestSummary",
    "LockedError",
    "LogCorruptError",
    "LogError",
    "LogLine",
    "LogSettings",
    "LogStatus",
    "LogWriteError",
    "LogWriter",
    "MonitorConfig",
    "MonitorReport",
    "Origin",
    "ProjectionError",
    "QueryError",
    "RelayConfig",
    "RelayReport",
    "RotationPolicy",
    "Sidecar",
    "Source",
    "WebhookConfig",
    "WebhookStats",
    "decode_line",
    "events_dir",
    "inspect_frame",
    "iter_log",
    "log_status",
    "run_agent",
    "run_backfill",
    "run_monitor",
    "run_relay",
    "run_source",
    "run_sources",
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
    **dict.fromkeys(
        (
            "AgentConfig",
            "BackfillConfig",
            "BackfillReport",
            "IngestSummary",
            "LogSettings",
            "MonitorConfig",
            "MonitorReport",
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
        ),
        "ingest.sources",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ingest' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
