"""The relay source: stands between a team's clients and the platform, logging every frame both ways.

Public API: :func:`run_relay` (a source: ``run_relay(writer, config, stop)``),
:class:`RelayConfig`, :class:`RelayReport`, and :data:`SOURCE` (the
envelope's ``source``).

"""

from __future__ import annotations

from ingest.sources.relay.config import RELAY_TOKEN_ENV, RelayConfig, is_loopback
from ingest.sources.relay.server import RelayReport, run_relay
from ingest.sources.relay.session import SOURCE


__all__ = ["RELAY_TOKEN_ENV", "SOURCE", "RelayConfig", "RelayReport", "is_loopback", "run_relay"]
