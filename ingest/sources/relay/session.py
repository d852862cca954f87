"""One relayed connection's bookkeeping: what to log of each frame, the envelope, how it ended. Pure.

The asyncio shell (:mod:`ingest.sources.relay.server`) hands every frame to
:meth:`RelaySession.from_platform` or :meth:`RelaySession.from_client`
before forwarding it; each returns the :class:`~ingest.log.frames.Frame` to
append (with :attr:`RelaySession.origin_in` / :attr:`RelaySession.origin_out`)
or ``None`` for audio, which is forwarded but never written, only counted:

* from the platform, ``audio`` frames (:attr:`Frame.is_audio`);
* from the client, ``user_audio_chunk`` frames, which have no ``type``
  (recognised by their first bytes, as audio is, so the base64 is never parsed).

The conversation id comes from the platform's
``conversation_initiation_metadata``; lines of both directions carry it from
then on. :meth:`RelaySession.closed_record` is ``capture``'s own line about
how the connection ended, shaped like the agent client's.

"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import orjson

from ingest.log.envelope import Origin
from ingest.log.frames import Frame, conversation_id_of, inspect_frame


__all__ = ["CAPTURE_SOURCE", "SOURCE", "ClosedBy", "RelaySession", "is_client_audio"]

SOURCE = "relay"
#: The source of capture's own lines (the connection_closed record), as for the agent client.
CAPTURE_SOURCE = "capture"

# How the SDKs serialise a microphone chunk: JSON.stringify and Python's json.dumps.
_CLIENT_AUDIO_PREFIXES = ('{"user_audio_chunk":', '{"user_audio_chunk" :')


def is_client_audio(data: str | bytes) -> bool:
    """Whether a client frame is a ``user_audio_chunk`` (counted, never stored)."""
    return isinstance(data, str) and data.startswith(_CLIENT_AUDIO_PREFIXES)


class ClosedBy(enum.StrEnum):
    """Which side ended a relayed connection."""

    SERVER = "server"  # the platform closed (or dropped) first
    CLIENT = "client"  # the client closed (or dropped) first
    RELAY = "relay"  # capture closed both: stopping, a stalled side, a failed log


@dataclass
class RelaySession:
    """The state of one relayed connection, fed with frames in the order they travel.

    Attributes:
        agent_id: The agent of the conversation.
        connection_id: Unique per relayed connection.
        conversation_id: From the platform's metadata frame; ``None`` before it.
        frames_in: Frames from the platform logged.
        frames_out: Frames from the client logged.
        audio_in: ``audio`` frames from the platform forwarded, not logged.
        audio_out: ``user_audio_chunk`` frames from the client forwarded, not logged.

    """

    agent_id: str
    connection_id: str
    conversation_id: str | None = None
    frames_in: int = 0
    frames_out: int = 0
    audio_in: int = 0
    audio_out: int = 0
    origin_in: Origin = field(init=False)
    origin_out: Origin = field(init=False)

    def __post_init__(self) -> None:
        self._set_origins()

    def _set_origins(self) -> None:
        self.origin_in = Origin(SOURCE, "in", self.agent_id, self.connection_id, self.conversation_id)
        self.origin_out = Origin(SOURCE, "out", self.agent_id, self.connection_id, self.conversation_id)

    def from_platform(self, data: str | bytes) -> Frame | None:
        """Return the frame to log before forwarding ``data`` to the client, ``None`` for audio."""
        frame = inspect_frame(data)
        if frame.type == "audio":
            self.audio_in += 1
            return None
        if self.conversation_id is None:
            conversation_id = conversation_id_of(frame)
            if conversation_id is not None:
                self.conversation_id = conversation_id
                self._set_origins()
        self.frames_in += 1
        return frame

    def from_client(self, data: str | bytes) -> Frame | None:
        """Return the frame to log before forwarding ``data`` to the platform, ``None`` for audio."""
        if is_client_audio(data):
            self.audio_out += 1
            return None
        self.frames_out += 1
        return inspect_frame(data)

    def closed_record(
        self, *, close_code: int, close_reason: str, closed_by: ClosedBy, duration_s: float
    ) -> Frame:
        """Return capture's ``connection_closed`` line for this connection (log it with :meth:`closed_origin`).

        Args:
            close_code: The code that ended the conversation (1006 for a dropped connection).
            close_reason: Its reason, or why the relay closed.
            closed_by: Who ended it.
            duration_s: How long the relayed connection was open.

        """
        record = {
            "type": "connection_closed",
            "close_code": close_code,
            "close_reason": close_reason,
            "closed_by": str(closed_by),
            "duration_s": round(duration_s, 3),
            "frames": self.frames_in + self.frames_out,
            "audio_skipped": self.audio_in + self.audio_out,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "audio_in": self.audio_in,
            "audio_out": self.audio_out,
        }
        return inspect_frame(orjson.dumps(record).decode())

    def closed_origin(self) -> Origin:
        """The envelope of :meth:`closed_record`: source ``capture``, as the agent client writes it."""
        return Origin(CAPTURE_SOURCE, "in", self.agent_id, self.connection_id, self.conversation_id)
