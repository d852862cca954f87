"""The simulator's webhook side: post-call deliveries as ElevenLabs sends them, signed well or badly.

:class:`DeliveryFactory` builds deliveries (body bytes plus headers) that look
like the real ones (``docs/elevenlabs-protocol.md`` §6a), deterministically
from a seed and a clock:

* ``post_call_transcription``: the GET-conversation model under ``data``, its
  transcript alternating agent and user turns (``source_medium`` ``audio`` or
  ``text``, ``source_event_id``), with non-ASCII text; every few bodies are
  written with ``\\uXXXX`` escapes, so a receiver that re-serialises is caught;
* ``post_call_audio``: ``data.full_audio`` is base64 junk standing for an MP3;
  sent as chunked HTTP, like the real one;
* ``call_initiation_failure``: a failure reason and telephony metadata.

Each is signed per :class:`Signing`: correctly, or with a wrong secret, a
stale timestamp, a tampered body, no header or a malformed one.
:func:`valid_header_variants` lists correct headers written differently.
:func:`send` POSTs one delivery with aiohttp; used by the tests, the bench and
``capture simulate``.

"""

from __future__ import annotations

import asyncio
import base64
import enum
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from ingest.errors import CaptureError
from ingest.sources.webhook.signature import MAX_AGE, SIGNATURE_HEADER, sign


__all__ = [
    "AUDIO",
    "INITIATION_FAILURE",
    "TRANSCRIPTION",
    "Delivery",
    "DeliveryFactory",
    "Encoding",
    "Signing",
    "conversation_data",
    "encode_body",
    "envelope",
    "send",
    "send_many",
    "valid_header_variants",
]

TRANSCRIPTION = "post_call_transcription"
AUDIO = "post_call_audio"
INITIATION_FAILURE = "call_initiation_failure"

Encoding = Literal["compact", "escaped", "pretty"]

_USER_LINES = (
    "Olá, preciso de ajuda com a minha fatura.",
    "Can you check my last invoice?",
    "Grüße aus München — wo ist meine Bestellung?",
    "注文の状況を教えてください。",
    "My order number is 12345 😀",
    "¿Puedo cambiar la dirección de entrega?",
    'She said "hi" and typed C:\\temp by mistake.',
    "Я хочу отменить подписку.",
    "I'd like to talk to a human, please.",
)
_AGENT_LINES = (
    "Of course! Let me look that up for you.",
    "I found your account. Anything else?",
    "Claro, um momento por favor.",
    "Your order ships tomorrow.",
)
_FIRST_MESSAGE = "Hello! How can I help you today?"
_FAILURE_REASONS = ("busy", "no-answer", "unknown")
_MALFORMED_HEADERS = (
    "t={t}",  # no v0
    "v0={sig}",  # no t
    "t=soon,v0={sig}",  # t not a number
    "t={t};v0={sig}",  # wrong separator
    "t={t},v0=not-hex",
    "t={t},t={t},v0={sig}",  # t twice
    "{sig}",  # a bare signature
)


class Signing(enum.StrEnum):
    """How a delivery is signed; every way but ``valid`` must be refused with 401."""

    VALID = "valid"
    WRONG_SECRET = "wrong_secret"
    STALE = "stale"  # t older than the 30-minute tolerance (a future t is accepted, as by the SDK)
    TAMPERED = "tampered"  # signed, then one byte of the body changed
    MISSING = "missing"  # no ElevenLabs-Signature header
    MALFORMED = "malformed"


@dataclass(frozen=True)
class Delivery:
    """One webhook request, ready to send.

    Attributes:
        type: The body's ``type``.
        conversation_id: ``data.conversation_id``.
        body: The exact bytes to send.
        headers: The request headers (signature, content type).
        signing: How it was signed.
        chunked: Send with chunked transfer encoding (no Content-Length).

    """

    type: str
    conversation_id: str
    body: bytes = field(repr=False)
    headers: Mapping[str, str]
    signing: Signing
    chunked: bool = False

    @property
    def expected_status(self) -> int:
        """What a correct receiver answers: 200 if validly signed, else 401."""
        return 200 if self.signing is Signing.VALID else 401


def _entry(role: str, message: str, at: int, medium: str, event_id: int) -> dict[str, Any]:
    return {
        "role": role,
        "agent_metadata": {"agent_id": None, "workflow_node_id": None} if role == "agent" else None,
        "message": message,
        "multivoice_message": None,
        "tool_calls": [],
        "tool_results": [],
        "feedback": None,
        "llm_override": None,
        "time_in_call_secs": at,
        "conversation_turn_metrics": None,
        "rag_retrieval_info": None,
        "llm_usage": None,
        "interrupted": False,
        "original_message": None,
        "source_medium": medium,
        "source_event_id": event_id,
    }


def conversation_data(
    rng: random.Random,
    *,
    agent_id: str,
    conversation_id: str,
    start_unix: int,
    user_turns: tuple[int, int] = (2, 5),
) -> dict[str, Any]:
    """Build a finished conversation in the GET-conversation model (a transcription's ``data``)."""
    transcript = [_entry("agent", _FIRST_MESSAGE, 0, "audio", 1)]
    at = 0
    for event_id in range(2, 2 + rng.randint(*user_turns)):
        at += rng.randint(2, 9)
        transcript.append(
            _entry("user", rng.choice(_USER_LINES), at, rng.choice(("audio", "text")), event_id)
        )
        at += rng.randint(1, 4)
        transcript.append(_entry("agent", rng.choice(_AGENT_LINES), at, "audio", event_id))
    duration = at + 3
    user_id = f"user-{rng.randint(1, 999):03d}"
    return {
        "agent_id": agent_id,
        "conversation_id": conversation_id,
        "status": "done",
        "user_id": user_id,
        "transcript": transcript,
        "metadata": {
            "start_time_unix_secs": start_unix,
            "call_duration_secs": duration,
            "cost": 40 * len(transcript),
            "termination_reason": "end_call tool was called.",
            "main_language": "en",
            "phone_call": None,
        },
        "analysis": {
            "evaluation_criteria_results": {},
            "data_collection_results": {},
            "call_successful": "success",
            "transcript_summary": "The user asked about an order.",
        },
        "conversation_initiation_client_data": {
            "conversation_config_override": {"conversation": {"text_only": False}},
            "user_id": user_id,
            "dynamic_variables": {"system__conversation_id": conversation_id, "user_name": "Zoë"},
        },
        "has_audio": True,
        "has_user_audio": True,
        "has_response_audio": True,
    }


def envelope(kind: str, data: Mapping[str, Any], event_timestamp: int) -> dict[str, Any]:
    """Wrap ``data`` in the webhook envelope ``{"type", "event_timestamp", "data"}``."""
    return {"type": kind, "event_timestamp": event_timestamp, "data": dict(data)}


def encode_body(payload: Any, encoding: Encoding = "compact") -> bytes:
    """Serialise a payload as a server would.

    ``compact``: one line, UTF-8, non-ASCII written literally; ``escaped``: one
    line with ``\\uXXXX`` escapes; ``pretty``: indented over several lines.

    """
    if encoding == "escaped":
        return json.dumps(payload, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    if encoding == "pretty":
        return json.dumps(payload, ensure_ascii=False, indent=2).encode("utf-8")
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def valid_header_variants(secret: str, timestamp: int, body: bytes) -> list[str]:
    """Correct ``ElevenLabs-Signature`` values written in every accepted way."""
    good = sign(secret, timestamp, body).split("v0=", 1)[1]
    other = sign(secret + "-old", timestamp, body).split("v0=", 1)[1]
    return [
        f"t={timestamp},v0={good}",
        f"t = {timestamp} , v0 = {good}",
        f"v0={good},t={timestamp}",
        f"t={timestamp},v0={other},v0={good}",  # two secrets during a rotation
        f"t={timestamp},v1=deadbeef,v0={good}",  # a future scheme, ignored
        f" t={timestamp},,v0={good} ",
    ]


def _tamper(body: bytes) -> bytes:
    # Change one letter of the conversation id: the body stays JSON, and the
    # change is the kind an attacker would make.
    key = body.find(b'"conversation_id":')
    at = body.find(b'"', key + len(b'"conversation_id":')) + 1 if key >= 0 else 0
    return body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]


class DeliveryFactory:
    """Deterministic deliveries: the same seed and clock readings give the same bytes.

    Args:
        secret: The webhook secret correct signatures use.
        seed: Seeds the ids, transcripts, audio and the choice of bad headers.
        agent_id: The agent of every delivery.
        clock: Returns the Unix time used for ``t`` and ``event_timestamp``.
        escaped_every: Every n-th transcription body is written with
            ``\\uXXXX`` escapes; 0 for none.

    """

    def __init__(
        self,
        secret: str,
        *,
        seed: int = 0,
        agent_id: str = "agent_demo",
        clock: Callable[[], float] = time.time,
        escaped_every: int = 3,
    ) -> None:
        self._secret = secret
        self._rng = random.Random(seed)
        self.agent_id = agent_id
        self._clock = clock
        self._escaped_every = escaped_every
        self._transcriptions = 0

    def conversation_id(self) -> str:
        """Return a fresh conversation id (``conv_`` + 24 hex digits)."""
        return f"conv_{self._rng.getrandbits(96):024x}"

    def transcription(
        self,
        *,
        signing: Signing = Signing.VALID,
        conversation_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        encoding: Encoding | None = None,
    ) -> Delivery:
        """Build a ``post_call_transcription``.

        Args:
            data: The conversation (GET-conversation model) to send; a new
                synthetic one if omitted.
            encoding: How to serialise; by default compact, and escaped for
                every ``escaped_every``-th transcription.

        """
        now = int(self._clock())
        if data is None:
            conversation_id = conversation_id or self.conversation_id()
            data = conversation_data(
                self._rng, agent_id=self.agent_id, conversation_id=conversation_id, start_unix=now - 120
            )
        self._transcriptions += 1
        if encoding is None:
            every = self._escaped_every
            encoding = "escaped" if every and self._transcriptions % every == 0 else "compact"
        body = encode_body(envelope(TRANSCRIPTION, data, now), encoding)
        return self._signed(TRANSCRIPTION, str(data.get("conversation_id")), body, signing, now)

    def audio(
        self,
        *,
        signing: Signing = Signing.VALID,
        conversation_id: str | None = None,
        audio_bytes: int = 48_000,
        chunked: bool = True,
    ) -> Delivery:
        """Build a ``post_call_audio`` carrying ``audio_bytes`` of junk audio (base64)."""
        now = int(self._clock())
        conversation_id = conversation_id or self.conversation_id()
        audio = base64.b64encode(self._rng.randbytes(audio_bytes)).decode("ascii")
        data = {"agent_id": self.agent_id, "conversation_id": conversation_id, "full_audio": audio}
        body = encode_body(envelope(AUDIO, data, now))
        return self._signed(AUDIO, conversation_id, body, signing, now, chunked=chunked)

    def initiation_failure(
        self, *, signing: Signing = Signing.VALID, conversation_id: str | None = None
    ) -> Delivery:
        """Build a ``call_initiation_failure`` (an outbound call that never connected)."""
        now = int(self._clock())
        conversation_id = conversation_id or self.conversation_id()
        reason = self._rng.choice(_FAILURE_REASONS)
        data = {
            "agent_id": self.agent_id,
            "conversation_id": conversation_id,
            "failure_reason": reason,
            "metadata": {
                "type": "twilio",
                "body": {"CallStatus": reason, "To": "+351910000000", "From": "+14155550100"},
            },
        }
        body = encode_body(envelope(INITIATION_FAILURE, data, now))
        return self._signed(INITIATION_FAILURE, conversation_id, body, signing, now)

    def mix(
        self, count: int, *, bad_every: int = 5, audio_every: int = 4, failure_every: int = 7
    ) -> list[Delivery]:
        """Build ``count`` deliveries as the simulator sends them.

        Mostly transcriptions; every ``audio_every``-th is a ``post_call_audio``
        (of the previous conversation), every ``failure_every``-th a
        ``call_initiation_failure``, and every ``bad_every``-th is badly signed,
        cycling through the bad :class:`Signing` kinds. 0 disables a kind.

        """
        bad = [s for s in Signing if s is not Signing.VALID]
        deliveries: list[Delivery] = []
        last_conversation: str | None = None
        for i in range(1, count + 1):
            signing = (
                bad[(i // bad_every - 1) % len(bad)] if bad_every and i % bad_every == 0 else Signing.VALID
            )
            if audio_every and i % audio_every == 0:
                delivery = self.audio(signing=signing, conversation_id=last_conversation, audio_bytes=8_000)
            elif failure_every and i % failure_every == 0:
                delivery = self.initiation_failure(signing=signing)
            else:
                delivery = self.transcription(signing=signing)
            last_conversation = delivery.conversation_id
            deliveries.append(delivery)
        return deliveries

    def _signed(
        self,
        kind: str,
        conversation_id: str,
        body: bytes,
        signing: Signing,
        now: int,
        *,
        chunked: bool = False,
    ) -> Delivery:
        headers = {"Content-Type": "application/json"}
        sent = body
        if signing is Signing.VALID:
            headers[SIGNATURE_HEADER] = sign(self._secret, now, body)
        elif signing is Signing.WRONG_SECRET:
            headers[SIGNATURE_HEADER] = sign(f"wsec_wrong{self._rng.getrandbits(32):08x}", now, body)
        elif signing is Signing.STALE:
            t = now - MAX_AGE - 60
            headers[SIGNATURE_HEADER] = sign(self._secret, t, body)
        elif signing is Signing.TAMPERED:
            headers[SIGNATURE_HEADER] = sign(self._secret, now, body)
            sent = _tamper(body)
        elif signing is Signing.MALFORMED:
            digest = sign(self._secret, now, body).split("v0=", 1)[1]
            template = self._rng.choice(_MALFORMED_HEADERS)
            headers[SIGNATURE_HEADER] = template.format(t=now, sig=digest)
        return Delivery(kind, conversation_id, sent, headers, signing, chunked)


async def _pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def send(
    session: aiohttp.ClientSession, url: str, delivery: Delivery, *, chunk_size: int = 64 * 1024
) -> int:
    """POST one delivery and return the HTTP status (the response body is read and dropped).

    Raises:
        CaptureError: the request could not be sent or answered.

    """
    data: bytes | AsyncIterator[bytes] = (
        _pieces(delivery.body, chunk_size) if delivery.chunked else delivery.body
    )
    try:
        async with session.post(url, data=data, headers=dict(delivery.headers)) as response:
            await response.read()
            return response.status
    except (aiohttp.ClientError, OSError) as exc:
        raise CaptureError(f"webhook POST to {url} failed: {exc}") from exc


async def send_many(url: str, deliveries: Sequence[Delivery], *, concurrency: int = 1) -> list[int]:
    """POST deliveries with at most ``concurrency`` in flight; return their statuses in order."""
    statuses = [0] * len(deliveries)
    next_index = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(deliveries):
                index = next_index
                next_index += 1
                statuses[index] = await send(session, url, deliveries[index])

        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, concurrency)):
                group.create_task(worker())
    return statuses
