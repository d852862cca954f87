"""The simulator's webhook side: post-call deliveries as ElevenLabs sends them, signed well or badly.

:class:`DeliveryFactory` builds deliveries (body bytes plus headers) that look
like the real ones (``docs/elevenlabs-protocol.md`` §6a; elevenlabs.io/docs …
/workflows/post-call-webhooks), deterministically from a seed and a clock:

* ``post_call_transcription``: the GET-conversation body
  (``GetConversationResponseModel``) under ``data``, with non-ASCII text;
  every few bodies are written with ``\\uXXXX`` escapes, so a receiver that
  re-serialises is caught; with the agent's "exclude transcript" option
  (``exclude_transcript`` in the SDK's ``ConvAiWebhooks``) ``data`` has no
  ``transcript``;
* ``post_call_transcription_otel``: the conversation as an OpenTelemetry trace,
  ``data.otlp_traces`` (when the webhook's ``transcript_format`` is
  ``opentelemetry``; the docs' "OpenTelemetry traces" page);
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
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ingest.errors import CaptureError
from ingest.simulator.conversation import (
    Encoding,
    SimConversation,
    conversation_body,
    encode_body,
    synthesize,
)
from ingest.simulator.otel import otlp_traces
from ingest.sources.webhook.signature import MAX_AGE, SIGNATURE_HEADER, sign


__all__ = [
    "AUDIO",
    "INITIATION_FAILURE",
    "TRANSCRIPTION",
    "TRANSCRIPTION_OTEL",
    "Delivery",
    "DeliveryFactory",
    "Encoding",
    "Signing",
    "encode_body",
    "envelope",
    "send",
    "send_many",
    "valid_header_variants",
]

TRANSCRIPTION = "post_call_transcription"
TRANSCRIPTION_OTEL = "post_call_transcription_otel"
AUDIO = "post_call_audio"
INITIATION_FAILURE = "call_initiation_failure"

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


def envelope(kind: str, data: Mapping[str, Any], event_timestamp: int) -> dict[str, Any]:
    """Wrap ``data`` in the webhook envelope ``{"type", "event_timestamp", "data"}``."""
    return {"type": kind, "event_timestamp": event_timestamp, "data": dict(data)}


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
        self._seed = seed
        self._rng = random.Random(seed)
        self.agent_id = agent_id
        self._clock = clock
        self._escaped_every = escaped_every
        self._transcriptions = 0

    def conversation_id(self) -> str:
        """Return a fresh conversation id (``conv_`` + 24 hex digits)."""
        return f"conv_{self._rng.getrandbits(96):024x}"

    def conversation(self, conversation_id: str | None = None) -> SimConversation:
        """Synthesise a finished conversation of :attr:`agent_id` that started two minutes ago."""
        return synthesize(
            seed=self._seed,
            key=f"hook:{self._rng.getrandbits(64):016x}",
            agent_id=self.agent_id,
            start_unix=int(self._clock()) - 120,
            status="done",
            conversation_id=conversation_id or self.conversation_id(),
        )

    def transcription(
        self,
        *,
        signing: Signing = Signing.VALID,
        conversation_id: str | None = None,
        data: Mapping[str, Any] | None = None,
        encoding: Encoding | None = None,
        exclude_transcript: bool = False,
    ) -> Delivery:
        """Build a ``post_call_transcription``.

        Args:
            data: The conversation (a GET-conversation body) to send; a new
                synthetic one if omitted.
            encoding: How to serialise; by default compact, and escaped for
                every ``escaped_every``-th transcription.
            exclude_transcript: Send it as an agent with the "exclude
                transcript" webhook option does: ``data`` without ``transcript``.

        """
        now = int(self._clock())
        if data is None:
            data = conversation_body(self.conversation(conversation_id), "done")
        if exclude_transcript:
            data = {key: value for key, value in data.items() if key != "transcript"}
        self._transcriptions += 1
        if encoding is None:
            every = self._escaped_every
            encoding = "escaped" if every and self._transcriptions % every == 0 else "compact"
        body = encode_body(envelope(TRANSCRIPTION, data, now), encoding)
        return self._signed(TRANSCRIPTION, str(data.get("conversation_id")), body, signing, now)

    def transcription_otel(
        self, *, signing: Signing = Signing.VALID, conversation: SimConversation | None = None
    ) -> Delivery:
        """Build a ``post_call_transcription_otel``: ``data`` is the ids and ``otlp_traces``, no transcript.

        Args:
            conversation: The (finished) conversation to trace; a new synthetic
                one if omitted.

        """
        now = int(self._clock())
        conversation = conversation or self.conversation()
        data = {
            "conversation_id": conversation.conversation_id,
            "agent_id": conversation.agent_id,
            "otlp_traces": otlp_traces(conversation, conversation.status, source="post_call_webhook"),
        }
        body = encode_body(envelope(TRANSCRIPTION_OTEL, data, now))
        return self._signed(TRANSCRIPTION_OTEL, conversation.conversation_id, body, signing, now)

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
        self,
        count: int,
        *,
        bad_every: int = 5,
        audio_every: int = 4,
        failure_every: int = 7,
        exclude_every: int = 0,
        otel_every: int = 0,
    ) -> list[Delivery]:
        """Build ``count`` deliveries as the simulator sends them.

        Mostly transcriptions; every ``audio_every``-th is a ``post_call_audio``
        (of the previous conversation), every ``failure_every``-th a
        ``call_initiation_failure``, every ``otel_every``-th a
        ``post_call_transcription_otel``, every ``exclude_every``-th
        transcription has no transcript, and every ``bad_every``-th delivery is
        badly signed, cycling through the bad :class:`Signing` kinds. 0
        disables a kind.

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
            elif otel_every and i % otel_every == 0:
                delivery = self.transcription_otel(signing=signing)
            else:
                exclude = bool(exclude_every) and i % exclude_every == 0
                delivery = self.transcription(signing=signing, exclude_transcript=exclude)
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
