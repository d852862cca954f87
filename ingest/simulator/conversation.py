"""One synthetic conversation of the simulated platform, and the bodies the platform serves of it.

Pure data, no I/O. :func:`synthesize` builds a :class:`SimConversation`
deterministically from a seed and a key; :func:`conversation_body` and
:func:`conversation_summary` give it as the Conversations API's GET body and
list entry; :func:`encode_body` serialises a body as the platform does.

Shapes follow the official SDK's models (``elevenlabs/types``:
``get_conversation_response_model.py``, ``conversation_summary_response_model.py``,
``conversation_history_transcript_response_model.py``,
``conversation_history_metadata_common_model.py`` and the models they use), so a
body validates against them. Channels (:data:`CHANNELS`) give the metadata the
platform adds for WhatsApp (``metadata.whatsapp``), the phone
(``metadata.phone_call``, tagged ``twilio`` or ``sip_trunking``) and SMS
(``metadata.sms``), with the matching ``conversation_initiation_source``.

Transcript variants, each opt-in (see :func:`synthesize`): entries with only
the keys of the docs' post-call webhook example (no ``source_medium``, no
``source_event_id``; elevenlabs.io/docs … /workflows/post-call-webhooks);
``dtmf`` and ``image`` entries (an image entry's ``message`` is null);
interrupted entries with their ``original_message``; a per-entry
``user_identifier`` (multi-party calls); failed calls that keep their user turns;
analysis with evaluation-criteria and data-collection results.

"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Literal


__all__ = [
    "CHANNELS",
    "FINISHED",
    "WEB_SOURCES",
    "Channel",
    "Encoding",
    "SimConversation",
    "Status",
    "conversation_body",
    "conversation_id_for",
    "conversation_summary",
    "encode_body",
    "synthesize",
]

Status = Literal["initiated", "in-progress", "processing", "done", "failed"]
Encoding = Literal["compact", "escaped", "pretty"]
Channel = Literal["widget", "sdk", "whatsapp", "twilio", "sip_trunking", "sms"]

#: Every :data:`Channel`.
CHANNELS: tuple[Channel, ...] = ("widget", "sdk", "whatsapp", "twilio", "sip_trunking", "sms")

#: Statuses after which a conversation never changes.
FINISHED: frozenset[str] = frozenset({"done", "failed"})

#: The initiation sources of a conversation without a channel (web and SDK clients).
WEB_SOURCES = ("widget", "js_sdk", "react_sdk", "python_sdk")

# Non-ASCII on purpose: accents, CJK, an emoji (a surrogate pair when escaped),
# quotes and a backslash that must survive byte for byte.
_USER_LINES = (
    "Olá, preciso de ajuda com a minha fatura.",
    "Can you check my last invoice?",
    "Grüße aus München — wo ist meine Bestellung?",
    "注文の状況を教えてください。",
    "My order number is 12345 😀",
    "¿Puedo cambiar la dirección de entrega?",
    'She said "hi" and typed C:\\temp by mistake.',
    "Thanks, that's all for today.",
    "Я хочу отменить подписку.",
    "I'd like to talk to a human, please.",
)
_AGENT_LINES = (
    "Of course! Let me look that up for you.",
    "I found your account. Anything else?",
    "Claro, um momento por favor.",
    "Your order ships tomorrow.",
    "I'm transferring you now.",
)
_FIRST_MESSAGE = "Hello! How can I help you today?"
_FAILURE_REASONS = ("Error: LLM timeout", "Client disconnected before the first message")
_TERMINATIONS = ("end_call tool was called.", "Client disconnected: 1000", "Call ended by remote party")
_LANGUAGES = ("en", "pt", "de", "ja", "es")
_SOURCE_OF: dict[str, str] = {
    "widget": "widget",
    "sdk": "python_sdk",
    "whatsapp": "whatsapp",
    "twilio": "twilio",
    "sip_trunking": "sip_trunk",
    "sms": "twilio_sms",
}
# The keys of a transcript entry in the docs' post-call webhook example.
_MINIMAL_KEYS = (
    "role",
    "message",
    "tool_calls",
    "tool_results",
    "feedback",
    "time_in_call_secs",
    "conversation_turn_metrics",
)
_AGENT_NUMBER = "+14155550100"


@dataclass
class SimConversation:
    """One synthetic conversation and where it is in its life.

    The first group of fields is fixed at synthesis; the rest is the account's
    bookkeeping (:class:`~ingest.simulator.account.Account` moves it along).

    Attributes:
        conversation_id: Its id (``conv_`` + 24 hex digits).
        agent_id: Its agent.
        start_unix: When the call started.
        status: Its current status.
        transcript: The whole transcript (the GET body shows the part played
            so far while it is live, and only the first entry of a failed call
            unless it keeps its turns).
        user_id: The top-level ``user_id`` (also the client data's).
        source: ``metadata.conversation_initiation_source``.
        failure_reason: Why a failed call failed.
        summary: ``analysis.transcript_summary``.
        encoding: How its bodies are serialised.
        channel: Its :data:`Channel`, or ``None`` for a web/SDK conversation of
            no particular channel.
        channel_metadata: What the channel adds to ``metadata`` (``whatsapp``,
            ``phone_call`` or ``sms``).
        channel_user: The identity the channel knows (WhatsApp user id, the
            caller's number, the SMS sender), if any.
        dynamic_variables: The client data's ``dynamic_variables``.
        analysis_results: ``evaluation_criteria_results`` and
            ``data_collection_results`` of the analysis (empty unless asked for).
        main_language: ``metadata.main_language``.
        termination_reason: ``metadata.termination_reason`` once finished.
        keeps_turns_when_failed: A failed call's body keeps its user turns.
        played: How many transcript entries the monitor has played.
        polls: GETs answered while ``processing``.
        processing_since: ``clock()`` when it became ``processing``.
        gets: GETs answered, any status.
        live_started: Whether the monitor started playing it.
        extra: Fields merged into the top level of its GET body.

    """

    conversation_id: str
    agent_id: str
    start_unix: int
    status: Status
    transcript: list[dict[str, Any]]
    user_id: str
    source: str
    failure_reason: str | None
    summary: str
    encoding: Encoding
    channel: Channel | None = None
    channel_metadata: dict[str, Any] = field(default_factory=dict)
    channel_user: str | None = None
    dynamic_variables: dict[str, Any] = field(default_factory=dict)
    analysis_results: dict[str, Any] = field(default_factory=dict)
    main_language: str = "en"
    termination_reason: str = "end_call tool was called."
    keeps_turns_when_failed: bool = False
    played: int = 0
    polls: int = 0
    processing_since: float | None = None
    gets: int = 0
    live_started: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_secs(self) -> int:
        """Length of the call: the time of its last transcript entry, plus a little."""
        return int(self.transcript[-1]["time_in_call_secs"]) + 3 if self.transcript else 0

    def user_entries(self) -> list[dict[str, Any]]:
        """The transcript's user entries (image entries included, whose ``message`` is null)."""
        return [entry for entry in self.transcript if entry["role"] == "user"]

    def served_transcript(self, status: Status) -> list[dict[str, Any]]:
        """The transcript as a GET body of this status shows it."""
        if status in ("initiated", "in-progress"):
            return self.transcript[: self.played]
        if status == "failed":
            if not self.keeps_turns_when_failed:
                return self.transcript[:1]
            last_user = max(i for i, entry in enumerate(self.transcript) if entry["role"] == "user")
            return self.transcript[: last_user + 1]
        return self.transcript


def conversation_id_for(seed: int, key: str) -> str:
    """The id of the conversation synthesised from ``seed`` and ``key``."""
    return "conv_" + hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:24]


def synthesize(
    *,
    seed: int,
    key: str,
    agent_id: str,
    start_unix: int,
    status: Status,
    conversation_id: str | None = None,
    user_turns: tuple[int, int] = (2, 5),
    encoding: Encoding = "compact",
    channel: Channel | None = None,
    multi_party: bool = False,
    media_entries: bool = False,
    minimal_entries: bool = False,
    keeps_turns_when_failed: bool = False,
    analysis_results: bool = False,
) -> SimConversation:
    """Build a conversation: the same arguments give the same conversation.

    Args:
        seed: With ``key``, seeds every choice.
        key: Names the conversation within the seed.
        agent_id: Its agent (also each agent entry's ``agent_metadata.agent_id``).
        start_unix: When the call started.
        status: Its status.
        conversation_id: Its id; by default :func:`conversation_id_for`.
        user_turns: (min, max) spoken or typed user turns.
        encoding: How its bodies are serialised.
        channel: Where it happened; ``None``: a web or SDK conversation
            (``conversation_initiation_source`` one of :data:`WEB_SOURCES`).
        multi_party: User entries carry a ``user_identifier``, alternating
            between two participants.
        media_entries: After the turns, a ``dtmf`` entry, an ``image`` entry
            (``message`` null, ``file_input``), an interrupted agent reply and an
            interrupted user entry, both with ``original_message``.
        minimal_entries: Entries carry only the keys of the docs' webhook example.
        keeps_turns_when_failed: A failed call's body keeps its user turns.
        analysis_results: The analysis has evaluation-criteria and
            data-collection results, and the main language varies.

    """
    # The draws below keep the order they always had: an account of a given
    # seed keeps its transcripts whatever options are added later.
    rng = random.Random(f"{seed}:{key}")
    transcript = _transcript(rng, rng.randint(*user_turns), agent_id)
    user_id = f"user-{rng.randint(1000, 9999)}"
    web_source = rng.choice(WEB_SOURCES)
    failure_reason = rng.choice(_FAILURE_REASONS) if status == "failed" else None
    summary = f"The user asked about {rng.choice(('an invoice', 'an order', 'a refund'))}."

    extras = random.Random(f"{seed}:{key}:extras")
    conversation_id = conversation_id or conversation_id_for(seed, key)
    metadata, channel_user = _channel_metadata(extras, channel)
    if media_entries:
        transcript += _media_entries(transcript, agent_id, conversation_id)
    if multi_party:
        participants = (channel_user or user_id, f"participant-{extras.randint(100, 999)}")
        for n, entry in enumerate(e for e in transcript if e["role"] == "user"):
            entry["user_identifier"] = participants[n % 2]
    if minimal_entries:
        transcript = [{key: entry.get(key) for key in _MINIMAL_KEYS} for entry in transcript]
    dynamic_variables: dict[str, Any] = {"system__conversation_id": conversation_id, "user_name": "Zoë"}
    if channel in ("twilio", "sip_trunking"):
        dynamic_variables |= {"system__caller_id": channel_user, "system__called_number": _AGENT_NUMBER}
    conversation = SimConversation(
        conversation_id=conversation_id,
        agent_id=agent_id,
        start_unix=start_unix,
        status=status,
        transcript=transcript,
        user_id=user_id,
        source=_SOURCE_OF[channel] if channel else web_source,
        failure_reason=failure_reason,
        summary=summary,
        encoding=encoding,
        channel=channel,
        channel_metadata=metadata,
        channel_user=channel_user,
        dynamic_variables=dynamic_variables,
        keeps_turns_when_failed=keeps_turns_when_failed,
    )
    if analysis_results:
        conversation.analysis_results = _analysis_results(extras, status)
        conversation.main_language = extras.choice(_LANGUAGES)
        conversation.termination_reason = extras.choice(_TERMINATIONS)
    return conversation


def _transcript(rng: random.Random, turns: int, agent_id: str) -> list[dict[str, Any]]:
    entries = [_entry("agent", _FIRST_MESSAGE, 0, "audio", 1, agent_id)]
    at = 0
    event_id = 1
    for _ in range(turns):
        event_id += 1
        at += rng.randint(2, 9)
        medium = rng.choice(("audio", "text"))
        entries.append(_entry("user", rng.choice(_USER_LINES), at, medium, event_id, agent_id))
        at += rng.randint(1, 4)
        entries.append(_entry("agent", rng.choice(_AGENT_LINES), at, "audio", event_id, agent_id))
    return entries


def _entry(
    role: str, message: str | None, at: int, medium: str, event_id: int, agent_id: str
) -> dict[str, Any]:
    """A transcript entry as the GET body has it (``ConversationHistoryTranscriptResponseModel``)."""
    agent = role == "agent"
    return {
        "role": role,
        "agent_metadata": {"agent_id": agent_id, "workflow_node_id": None} if agent else None,
        "message": message,
        "multivoice_message": None,
        "tool_calls": [],
        "tool_results": [],
        "feedback": None,
        "llm_override": None,
        "time_in_call_secs": at,
        "conversation_turn_metrics": {"metrics": {"convai_llm_service_ttfb": {"elapsed_time": 0.31}}}
        if agent
        else None,
        "rag_retrieval_info": None,
        "llm_usage": None,
        "interrupted": False,
        "original_message": None,
        "source_medium": medium,
        "source_event_id": event_id,
    }


def _media_entries(
    transcript: list[dict[str, Any]], agent_id: str, conversation_id: str
) -> list[dict[str, Any]]:
    at = int(transcript[-1]["time_in_call_secs"])
    event_id = max(int(entry["source_event_id"]) for entry in transcript)
    dtmf = _entry("user", "48213#", at + 3, "dtmf", event_id + 1, agent_id)
    found = _entry("agent", "Thanks, I found order 48213.", at + 4, "audio", event_id + 1, agent_id)
    image = _entry("user", None, at + 9, "image", event_id + 2, agent_id)
    attachment = {
        "file_id": f"file_{conversation_id[5:17]}",
        "original_filename": "receipt.jpg",
        "mime_type": "image/jpeg",
        "file_url": f"https://files.example.invalid/{conversation_id}/receipt.jpg",
    }
    image |= {"file_input": attachment, "file_inputs": [attachment]}
    cut = _entry("agent", "The receipt shows", at + 10, "audio", event_id + 2, agent_id)
    cut |= {"interrupted": True, "original_message": "The receipt shows two charges on the same day."}
    # The user was cut off in turn: the entry keeps what was said, original_message the whole.
    said = _entry("user", "Wait, I", at + 12, "audio", event_id + 3, agent_id)
    said |= {"interrupted": True, "original_message": "Wait, I only ordered once."}
    reply = _entry("agent", "I'll refund the second charge.", at + 14, "audio", event_id + 3, agent_id)
    return [dtmf, found, image, cut, said, reply]


def _digits(rng: random.Random, count: int) -> str:
    return "".join(str(rng.randint(0, 9)) for _ in range(count))


def _channel_metadata(rng: random.Random, channel: Channel | None) -> tuple[dict[str, Any], str | None]:
    """What a channel adds to ``metadata``, and the user identity it knows."""
    if channel == "whatsapp":
        user = "3519" + _digits(rng, 8)  # WhatsApp ids are numbers without the "+"
        return {
            "whatsapp": {
                "direction": "inbound",
                "whatsapp_phone_number_id": _digits(rng, 15),
                "whatsapp_user_id": user,
            }
        }, user
    if channel in ("twilio", "sip_trunking"):
        caller = "+3519" + _digits(rng, 8)
        call: dict[str, Any] = {
            "type": channel,
            "direction": "inbound",
            "phone_number_id": "phnum_" + _digits(rng, 12),
            "agent_number": _AGENT_NUMBER,
            "external_number": caller,
            "call_sid": "CA" + rng.randbytes(16).hex(),
        }
        if channel == "twilio":
            call["stream_sid"] = "MZ" + rng.randbytes(16).hex()
        else:
            call["call_id"] = rng.randbytes(8).hex() + "@sip.example.invalid"
        return {"phone_call": call}, caller
    if channel == "sms":
        sender = "+3519" + _digits(rng, 8)
        return {
            "sms": {
                "direction": "inbound",
                "phone_number_id": "phnum_" + _digits(rng, 12),
                "sms_user_phone_number": sender,
                "agent_phone_number": _AGENT_NUMBER,
            }
        }, sender
    return {}, None


def _analysis_results(rng: random.Random, status: Status) -> dict[str, Any]:
    resolved = "failure" if status == "failed" else rng.choice(("success", "success", "failure"))
    order = rng.choice(("48213", "12345", None))
    return {
        "evaluation_criteria_results": {
            "issue_resolved": {
                "criteria_id": "issue_resolved",
                "result": resolved,
                "rationale": "The agent answered the question."
                if resolved == "success"
                else "No answer given.",
            }
        },
        "data_collection_results": {
            "order_number": {
                "data_collection_id": "order_number",
                "value": order,
                "json_schema": {"type": "string", "description": "The order number the user gave, if any."},
                "rationale": "Given by the user." if order else "The user gave none.",
            }
        },
    }


def conversation_body(c: SimConversation, status: Status) -> dict[str, Any]:
    """The ``GET /v1/convai/conversations/{id}`` body of ``c`` with this status (``GetConversationResponseModel``)."""
    live = status in ("initiated", "in-progress")
    finished = status in FINISHED
    transcript = c.served_transcript(status)
    analysis: dict[str, Any] | None = None
    if finished:
        analysis = {
            "evaluation_criteria_results": c.analysis_results.get("evaluation_criteria_results", {}),
            "data_collection_results": c.analysis_results.get("data_collection_results", {}),
            "call_successful": _call_successful(c, status),
            "transcript_summary": c.summary,
            "call_summary_title": "Support request",
        }
    return {
        "agent_id": c.agent_id,
        "conversation_id": c.conversation_id,
        "status": status,
        "user_id": c.user_id,
        "branch_id": None,
        "transcript": transcript,
        "metadata": {
            "start_time_unix_secs": c.start_unix,
            "accepted_time_unix_secs": c.start_unix,
            "call_duration_secs": 0 if live else c.duration_secs,
            "cost": 0 if live else 40 * len(c.transcript),
            "termination_reason": c.failure_reason or ("" if live else c.termination_reason),
            "error": {"code": 1011, "reason": c.failure_reason} if status == "failed" else None,
            "main_language": c.main_language,
            "conversation_initiation_source": c.source,
            "timezone": "Europe/Lisbon",
            "phone_call": None,
            "features_usage": {"is_livekit": False},
            **c.channel_metadata,
        },
        "analysis": analysis,
        "conversation_initiation_client_data": {
            "conversation_config_override": {"conversation": {"text_only": False}},
            "custom_llm_extra_body": {},
            "user_id": c.user_id,
            "source_info": {"source": c.source, "version": None},
            "dynamic_variables": c.dynamic_variables,
        },
        "has_audio": not live,
        "has_user_audio": not live,
        "has_response_audio": not live,
        "has_auxiliary_audio": False,
        **c.extra,
    }


def conversation_summary(c: SimConversation, status: Status, *, agent_name: str) -> dict[str, Any]:
    """The list entry of ``c`` with this status (``ConversationSummaryResponseModel``)."""
    finished = status in FINISHED
    return {
        "agent_id": c.agent_id,
        "agent_name": agent_name,
        "conversation_id": c.conversation_id,
        "start_time_unix_secs": c.start_unix,
        "call_duration_secs": c.duration_secs if finished or status == "processing" else 0,
        "message_count": len(c.transcript) if finished else c.played,
        "status": status,
        "call_successful": _call_successful(c, status) if finished else "unknown",
        "transcript_summary": c.summary if finished else None,
        "call_summary_title": "Support request" if finished else None,
        "main_language": c.main_language,
        "direction": "inbound",
        "termination_reason": c.failure_reason,
        "conversation_initiation_source": c.source,
        "tag_ids": [],
    }


def _call_successful(c: SimConversation, status: Status) -> str:
    if status == "failed":
        return "failure"
    criteria = c.analysis_results.get("evaluation_criteria_results", {})
    return "failure" if any(r["result"] == "failure" for r in criteria.values()) else "success"


def encode_body(payload: Any, encoding: Encoding = "compact") -> bytes:
    """Serialise a body as the platform does.

    ``compact``: one line, UTF-8, non-ASCII written literally (Starlette's
    ``JSONResponse``); ``escaped``: one line with ``\\uXXXX`` escapes;
    ``pretty``: indented over several lines.

    """
    if encoding == "escaped":
        return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    if encoding == "pretty":
        return json.dumps(payload, ensure_ascii=False, indent=2).encode("utf-8")
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
