"""The fake ElevenLabs platform: the network peer of tests, demos, benchmarks and ``capture simulate``.

One module per surface, composed by :class:`Simulator` on one port:

* :mod:`~ingest.simulator.agent_socket`: the conversation WebSocket, playing a
  :class:`Scenario` (:mod:`~ingest.simulator.scenario`) per connection with the
  events of :mod:`~ingest.simulator.events`;
* :mod:`~ingest.simulator.signed_url`: the signed-URL endpoint;
* :mod:`~ingest.simulator.rest`: the Conversations REST API over an
  :class:`Account` (:mod:`~ingest.simulator.account`) of synthetic conversations
  (:mod:`~ingest.simulator.conversation`, :mod:`~ingest.simulator.otel`);
* :mod:`~ingest.simulator.monitor`: the monitor socket over the account's live
  conversations;
* :mod:`~ingest.simulator.webhook_sender`: post-call webhooks, signed well or badly.

Import the names below from here, e.g. ``from ingest.simulator import Simulator, Scenario``.

"""

from __future__ import annotations

from ingest.simulator.account import Account, AccountSpec, BadQuery
from ingest.simulator.agent_socket import MAX_CLIENT_FRAME, ConnectionRecord
from ingest.simulator.conversation import CHANNELS, FINISHED, Channel, SimConversation, Status
from ingest.simulator.monitor import HISTORY_SIZE, MonitorRecord
from ingest.simulator.rest import CONVERSATIONS_PATH, RestFault, RestRecord
from ingest.simulator.scenario import (
    FAULTS,
    HUGE_TEXT_SIZE,
    MALFORMED_FRAMES,
    SCENARIOS,
    Scenario,
    scenario_from_name,
)
from ingest.simulator.server import HEALTH_PATH, Simulator, SimulatorThread, run_simulator
from ingest.simulator.signed_url import CONVERSATION_PATH, SIGNED_URL_PATH
from ingest.simulator.webhook_sender import (
    AUDIO,
    INITIATION_FAILURE,
    TRANSCRIPTION,
    TRANSCRIPTION_OTEL,
    Delivery,
    DeliveryFactory,
    Signing,
    encode_body,
    send,
    send_many,
    valid_header_variants,
)


__all__ = [
    "AUDIO",
    "CHANNELS",
    "CONVERSATIONS_PATH",
    "CONVERSATION_PATH",
    "FAULTS",
    "FINISHED",
    "HEALTH_PATH",
    "HISTORY_SIZE",
    "HUGE_TEXT_SIZE",
    "INITIATION_FAILURE",
    "MALFORMED_FRAMES",
    "MAX_CLIENT_FRAME",
    "SCENARIOS",
    "SIGNED_URL_PATH",
    "TRANSCRIPTION",
    "TRANSCRIPTION_OTEL",
    "Account",
    "AccountSpec",
    "BadQuery",
    "Channel",
    "ConnectionRecord",
    "Delivery",
    "DeliveryFactory",
    "MonitorRecord",
    "RestFault",
    "RestRecord",
    "Scenario",
    "Signing",
    "SimConversation",
    "Simulator",
    "SimulatorThread",
    "Status",
    "encode_body",
    "run_simulator",
    "scenario_from_name",
    "send",
    "send_many",
    "valid_header_variants",
]
