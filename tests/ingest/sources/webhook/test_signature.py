"""The ElevenLabs-Signature header: parsing, tolerance, constant-time check, signing. Plain values."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings, strategies as st

from ingest.errors import CaptureError
from ingest.simulator import valid_header_variants
from ingest.sources.webhook.signature import (
    MAX_AGE,
    REASONS,
    SignatureError,
    SignatureHeader,
    check_digest,
    check_timestamp,
    parse_signature_header,
    sign,
    signer,
    verify_signature,
)


SECRET = "wsec_0123456789abcdef0123"
NOW = 1_800_000_000
BODY = '{"type":"post_call_transcription","data":{"message":"Olá \\u00e1 注文"}}'.encode()


def reference_digest(secret: str, timestamp: int, body: bytes) -> str:
    """The documented scheme, written out independently."""
    message = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def reason_of(call: object, *args: object, **kwargs: object) -> str:
    assert callable(call)
    with pytest.raises(SignatureError) as info:
        call(*args, **kwargs)
    return info.value.reason


def test_sign_follows_the_documented_scheme() -> None:
    """sign() is HMAC-SHA256(secret, "{t}.{body}") in hex, as t=…,v0=…."""
    assert sign(SECRET, NOW, BODY) == f"t={NOW},v0={reference_digest(SECRET, NOW, BODY)}"


def test_signer_accepts_the_body_in_pieces() -> None:
    """Feeding the body in pieces gives the digest of the whole body."""
    mac = signer(SECRET, NOW)
    for i in range(0, len(BODY), 7):
        mac.update(BODY[i : i + 7])
    assert mac.hexdigest() == reference_digest(SECRET, NOW, BODY)


def test_bytes_and_str_secrets_agree() -> None:
    """A str secret is its UTF-8 bytes, as the official SDK keys the HMAC."""
    assert sign(SECRET.encode(), NOW, BODY) == sign(SECRET, NOW, BODY)


def test_verify_accepts_a_correct_signature() -> None:
    """A correctly signed, fresh delivery is accepted and its header returned."""
    header = verify_signature(SECRET, sign(SECRET, NOW, BODY), BODY, NOW)
    assert header == SignatureHeader(NOW, (reference_digest(SECRET, NOW, BODY),))


@pytest.mark.parametrize("value", valid_header_variants(SECRET, NOW, BODY))
def test_header_variants_are_accepted(value: str) -> None:
    """Blanks, either order, several v0, unknown schemes and empty elements are all accepted."""
    assert verify_signature(SECRET, value, BODY, NOW).timestamp == NOW


def test_every_v0_is_kept_in_order() -> None:
    """Several v0 values are all kept; unknown schemes are dropped."""
    header = parse_signature_header("v0=aa, v1=zz ,t=5,v0=BB")
    assert header == SignatureHeader(5, ("aa", "BB"))


@pytest.mark.parametrize("value", [None, "", "   "])
def test_a_missing_header_is_refused(value: str | None) -> None:
    """No header, or an empty one, is missing_header."""
    assert reason_of(parse_signature_header, value) == "missing_header"


@pytest.mark.parametrize(
    "value",
    [
        "t=1800000000",  # no v0
        "v0=abcd",  # no t
        "t=,v0=abcd",
        "t=soon,v0=abcd",
        "t=-5,v0=abcd",
        "t=1.5,v0=abcd",
        "t=１２３,v0=abcd",  # non-ASCII digits
        "t=1234567890123,v0=abcd",  # not seconds
        "t=1,t=1,v0=abcd",
        "t=1,v0=",
        "t=1,v0=not-hex",
        "t=1,v0=ab cd",
        "t=1,v0=é",
        "t=1;v0=abcd",
        "abcd",
        "t=1,=abcd",
    ],
)
def test_a_malformed_header_is_refused(value: str) -> None:
    """Anything that is not t=<digits> plus at least one hex v0 is malformed_header."""
    assert reason_of(parse_signature_header, value) == "malformed_header"


def test_timestamp_bounds_are_inclusive() -> None:
    """t exactly 30 min old is accepted, one second more is not; the age is returned."""
    assert check_timestamp(SignatureHeader(NOW - MAX_AGE, ("00",)), NOW) == MAX_AGE
    old = SignatureHeader(NOW - MAX_AGE - 1, ("00",))
    assert reason_of(check_timestamp, old, NOW) == "stale_timestamp"


@pytest.mark.parametrize("ahead", [1, 10 * 60, 86_400, 10 * 365 * 86_400])
def test_any_future_timestamp_is_accepted_by_default(ahead: int) -> None:
    """As the official SDK: a sender's clock ahead of ours (ours slow) never refuses a delivery."""
    assert check_timestamp(SignatureHeader(NOW + ahead, ("00",)), NOW) == -ahead
    verify_signature(SECRET, sign(SECRET, NOW + ahead, BODY), BODY, NOW)


def test_tolerances_are_parameters() -> None:
    """max_age can be narrowed, and a bound ahead set (inclusive)."""
    header = SignatureHeader(NOW - 10, ("00",))
    assert reason_of(check_timestamp, header, NOW, max_age=5) == "stale_timestamp"
    check_timestamp(SignatureHeader(NOW + 1, ("00",)), NOW, max_future=1)
    ahead = SignatureHeader(NOW + 2, ("00",))
    assert reason_of(check_timestamp, ahead, NOW, max_future=1) == "future_timestamp"


def test_stale_is_refused_even_when_correctly_signed() -> None:
    """A correct HMAC over an old t (or, with a bound, a future one) does not help."""
    old = NOW - MAX_AGE - 60
    ahead = NOW + 600
    assert reason_of(verify_signature, SECRET, sign(SECRET, old, BODY), BODY, NOW) == "stale_timestamp"
    value = sign(SECRET, ahead, BODY)
    assert reason_of(verify_signature, SECRET, value, BODY, NOW, max_future=300) == "future_timestamp"


def test_a_wrong_secret_is_a_mismatch() -> None:
    """A signature made with another secret is refused."""
    value = sign("wsec_other", NOW, BODY)
    assert reason_of(verify_signature, SECRET, value, BODY, NOW) == "mismatch"


def test_a_tampered_body_is_a_mismatch() -> None:
    """Changing one byte of the body, or its escapes, breaks the signature."""
    value = sign(SECRET, NOW, BODY)
    assert reason_of(verify_signature, SECRET, value, BODY.replace(b"Ol", b"OL"), NOW) == "mismatch"
    assert (
        reason_of(verify_signature, SECRET, value, BODY.replace(b"\\u00e1", "á".encode()), NOW) == "mismatch"
    )
    assert reason_of(verify_signature, SECRET, value, BODY + b"\n", NOW) == "mismatch"


def test_a_signature_for_another_timestamp_is_a_mismatch() -> None:
    """t is part of the signed message: moving t breaks the signature."""
    digest = reference_digest(SECRET, NOW, BODY)
    assert reason_of(verify_signature, SECRET, f"t={NOW + 1},v0={digest}", BODY, NOW) == "mismatch"


def test_uppercase_hex_does_not_match() -> None:
    """The comparison is over the exact string "v0=" + lowercase hexdigest, as the SDK does."""
    digest = reference_digest(SECRET, NOW, BODY)
    assert reason_of(check_digest, SignatureHeader(NOW, (digest.upper(),)), digest) == "mismatch"


def test_any_matching_v0_accepts() -> None:
    """The delivery is accepted when any v0 matches, wherever it is."""
    digest = reference_digest(SECRET, NOW, BODY)
    check_digest(SignatureHeader(NOW, ("00" * 32, digest, "ff" * 32)), digest)


def test_messages_never_contain_the_secret_or_the_expected_signature() -> None:
    """Refusal messages are safe for a 401 body and the process log."""
    digest = reference_digest(SECRET, NOW, BODY)
    attempts = [
        (None, NOW, None),
        ("t=x", NOW, None),
        (sign("wsec_other", NOW, BODY), NOW, None),
        (sign(SECRET, NOW, BODY), NOW + 10 * MAX_AGE, None),
        (sign(SECRET, NOW + 600, BODY), NOW, 60),
    ]
    for value, now, max_future in attempts:
        with pytest.raises(SignatureError) as info:
            verify_signature(SECRET, value, BODY, now, max_future=max_future)
        assert info.value.reason in REASONS
        assert SECRET not in str(info.value)
        assert digest not in str(info.value)


def test_signature_errors_belong_to_the_project_hierarchy() -> None:
    """SignatureError is a CaptureError, so nothing escapes the one hierarchy."""
    assert issubclass(SignatureError, CaptureError)


def test_the_official_sdk_accepts_our_signatures() -> None:
    """The elevenlabs SDK's construct_event verifies what sign() produces (and refuses a wrong one)."""
    import time

    from elevenlabs.client import ElevenLabs
    from elevenlabs.errors import BadRequestError

    webhooks = ElevenLabs(api_key="sk_test").webhooks
    now = int(time.time())
    text = BODY.decode()
    assert (
        webhooks.construct_event(text, sign(SECRET, now, BODY), SECRET)["type"] == "post_call_transcription"
    )
    with pytest.raises(BadRequestError):
        webhooks.construct_event(text, sign("wsec_other", now, BODY), SECRET)


@given(
    secret=st.text(min_size=1, max_size=40),
    timestamp=st.integers(min_value=0, max_value=10**11),
    body=st.binary(max_size=300),
    skew=st.integers(min_value=-MAX_AGE, max_value=10**9),
)
def test_sign_then_verify_round_trips(secret: str, timestamp: int, body: bytes, skew: int) -> None:
    """Whatever the secret, t and body, a signature verifies within the tolerance."""
    header = verify_signature(secret, sign(secret, timestamp, body), body, timestamp - skew)
    assert header.timestamp == timestamp


@settings(max_examples=60, deadline=None)
@given(skew=st.integers(min_value=-(10**8), max_value=10 * MAX_AGE).filter(lambda s: abs(s - MAX_AGE) > 2))
def test_our_window_is_the_official_sdks(skew: int) -> None:
    """construct_event and our default check accept and refuse the same timestamps (t = now - skew)."""
    import time

    from elevenlabs.client import ElevenLabs
    from elevenlabs.errors import BadRequestError

    webhooks = ElevenLabs(api_key="sk_test").webhooks
    now = int(time.time())
    value = sign(SECRET, now - skew, BODY)
    try:
        webhooks.construct_event(BODY.decode(), value, SECRET)
    except BadRequestError:
        sdk_accepts = False
    else:
        sdk_accepts = True
    try:
        verify_signature(SECRET, value, BODY, time.time())
    except SignatureError:
        ours_accepts = False
    else:
        ours_accepts = True
    assert ours_accepts is sdk_accepts


@given(value=st.text(max_size=80))
def test_parsing_never_fails_otherwise(value: str) -> None:
    """Any header value either parses or raises SignatureError, never anything else."""
    try:
        header = parse_signature_header(value)
    except SignatureError as exc:
        assert exc.reason in ("missing_header", "malformed_header")
    else:
        assert header.signatures
