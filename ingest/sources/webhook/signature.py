"""The ``ElevenLabs-Signature`` header of post-call webhooks: parse, check, sign. Pure.

ElevenLabs signs each delivery with ``ElevenLabs-Signature: t=<unix secs>,v0=<hex>``
where ``<hex>`` is HMAC-SHA256 of ``"{t}.{raw body}"`` keyed with the webhook
secret (UTF-8), as the official SDKs' ``construct_event`` checks it.

A receiver, in this order (so an unsigned or stale request is refused before
its body is read):

1. :func:`parse_signature_header` the header value;
2. :func:`check_timestamp` against the clock (``now`` is a parameter);
3. feed the raw body, as it arrives, to :func:`signer`'s HMAC;
4. :func:`check_digest` with the HMAC's ``hexdigest()``.

The timestamp window is the official SDK's (``construct_event``): a delivery
signed more than 30 minutes ago is refused, and one signed in the future is
accepted (a receiver whose clock runs slow must not refuse every delivery,
which ElevenLabs sends only once); a bound ahead is the caller's option.

:func:`verify_signature` does all four over a body already in memory, and
:func:`sign` builds a header (the simulator's side).

Every refusal is a :class:`SignatureError` whose :attr:`~SignatureError.reason`
is one of :data:`REASONS`. Messages never contain the secret nor the expected
signature.

"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Final

from ingest.errors import CaptureError


__all__ = [
    "CLOCK_SKEW_WARNING",
    "MAX_AGE",
    "REASONS",
    "SIGNATURE_HEADER",
    "SignatureError",
    "SignatureHeader",
    "check_digest",
    "check_timestamp",
    "parse_signature_header",
    "sign",
    "signer",
    "verify_signature",
]

SIGNATURE_HEADER: Final = "ElevenLabs-Signature"

#: Oldest accepted timestamp, in seconds before now (the SDKs' tolerance).
MAX_AGE: Final = 30 * 60

#: A verified delivery signed this many seconds away from now (either way)
#: says a clock is off: worth a warning, not a refusal.
CLOCK_SKEW_WARNING: Final = 5 * 60

#: Every :attr:`SignatureError.reason`.
REASONS: Final = frozenset(
    {"missing_header", "malformed_header", "stale_timestamp", "future_timestamp", "mismatch"}
)

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX = re.compile(r"[0-9a-fA-F]+")


class SignatureError(CaptureError):
    """A delivery's signature is missing, malformed, out of tolerance or wrong.

    The receiver answers 401 and stores nothing. ``str(error)`` is a short
    sentence fit for the 401 body and the process log.

    Attributes:
        reason: One of :data:`REASONS`, for counting and tests.

    """

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    """A parsed ``ElevenLabs-Signature`` header.

    Attributes:
        timestamp: ``t``, in Unix seconds.
        signatures: Every ``v0`` value, in order; the delivery is authentic
            when any of them matches (a sender rotating secrets may send two).

    """

    timestamp: int
    signatures: tuple[str, ...]


def parse_signature_header(value: str | None) -> SignatureHeader:
    """Parse the header's value.

    Accepted: ``t`` and ``v0`` in any order, blanks around ``,`` and ``=``,
    several ``v0`` values, and unknown schemes (``v1=…``), which are ignored.

    Args:
        value: The header value, or ``None`` when the request has none.

    Raises:
        SignatureError: the header is missing (``missing_header``), or has no
            ``t``, two ``t``, a ``t`` that is not a Unix time in seconds, no
            ``v0``, a ``v0`` that is not hex, or an element without ``=``
            (``malformed_header``).

    """
    if value is None or not value.strip():
        raise SignatureError("missing_header", f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    signatures: list[str] = []
    for element in value.split(","):
        if not element.strip():
            continue
        key, sep, item = element.partition("=")
        key, item = key.strip(), item.strip()
        if not sep or not key:
            raise SignatureError("malformed_header", f"{SIGNATURE_HEADER}: an element is not key=value")
        if key == "t":
            if timestamp is not None:
                raise SignatureError("malformed_header", f"{SIGNATURE_HEADER}: more than one t")
            if not _TIMESTAMP.fullmatch(item):
                raise SignatureError("malformed_header", f"{SIGNATURE_HEADER}: t is not a Unix time")
            timestamp = int(item)
        elif key == "v0":
            # Hex only: it keeps compare_digest on ASCII and refuses junk early.
            if not _HEX.fullmatch(item):
                raise SignatureError("malformed_header", f"{SIGNATURE_HEADER}: v0 is not hex")
            signatures.append(item)
    if timestamp is None:
        raise SignatureError("malformed_header", f"{SIGNATURE_HEADER}: no t")
    if not signatures:
        raise SignatureError("malformed_header", f"{SIGNATURE_HEADER}: no v0 signature")
    return SignatureHeader(timestamp, tuple(signatures))


def check_timestamp(
    header: SignatureHeader, now: float, *, max_age: float = MAX_AGE, max_future: float | None = None
) -> float:
    """Refuse a timestamp older than ``max_age`` or, if given, further ahead than ``max_future``.

    Both bounds are inclusive: ``t == now - max_age`` is accepted. With the
    defaults this is the official SDK's window: any future ``t`` passes.

    Args:
        now: The current Unix time in seconds (``time.time()``).
        max_future: Seconds ahead of ``now`` still accepted; ``None`` for no
            bound.

    Returns:
        The signature's age in seconds (negative when ``t`` is ahead of
        ``now``), for a warning when it is over :data:`CLOCK_SKEW_WARNING`
        either way.

    Raises:
        SignatureError: ``stale_timestamp`` or ``future_timestamp``.

    """
    age = now - header.timestamp
    if age > max_age:
        raise SignatureError(
            "stale_timestamp", f"signature timestamp is {age:.0f} s old (limit {max_age:.0f} s)"
        )
    if max_future is not None and -age > max_future:
        raise SignatureError(
            "future_timestamp", f"signature timestamp is {-age:.0f} s ahead (limit {max_future:.0f} s)"
        )
    return age


def signer(secret: str | bytes, timestamp: int) -> hmac.HMAC:
    """Start the HMAC of a delivery signed at ``timestamp``.

    Feed it the raw body with ``update`` (in as many pieces as it arrives in),
    then pass its ``hexdigest()`` to :func:`check_digest`.

    """
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    mac = hmac.new(key, digestmod=hashlib.sha256)
    mac.update(f"{timestamp}.".encode("ascii"))
    return mac


def check_digest(header: SignatureHeader, hexdigest: str) -> None:
    """Accept the delivery if any ``v0`` of ``header`` equals ``hexdigest``, in constant time.

    Raises:
        SignatureError: ``mismatch``.

    """
    expected = f"v0={hexdigest}"
    matched = False
    # Compare with every candidate, never stopping early, so the time taken
    # does not say which one (if any) came close.
    for candidate in header.signatures:
        matched |= hmac.compare_digest(expected, f"v0={candidate}")
    if not matched:
        raise SignatureError("mismatch", "signature does not match the body")


def verify_signature(
    secret: str | bytes,
    header_value: str | None,
    body: bytes,
    now: float,
    *,
    max_age: float = MAX_AGE,
    max_future: float | None = None,
) -> SignatureHeader:
    """Verify a delivery whose whole raw body is at hand.

    Returns:
        The parsed header.

    Raises:
        SignatureError: the delivery must be refused; ``reason`` says why.

    """
    header = parse_signature_header(header_value)
    check_timestamp(header, now, max_age=max_age, max_future=max_future)
    mac = signer(secret, header.timestamp)
    mac.update(body)
    check_digest(header, mac.hexdigest())
    return header


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """Return the ``ElevenLabs-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = signer(secret, timestamp)
    mac.update(body)
    return f"t={timestamp},v0={mac.hexdigest()}"
