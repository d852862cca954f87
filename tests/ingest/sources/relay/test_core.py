"""The relay's pure pieces: tokens, URLs, access decisions, what a frame becomes."""

from __future__ import annotations

import itertools

import orjson
import pytest

from ingest.errors import ConfigError
from ingest.sources.relay.access import signed_url_refusal, socket_refusal
from ingest.sources.relay.config import RelayConfig
from ingest.sources.relay.session import ClosedBy, RelaySession, is_client_audio
from ingest.sources.relay.tokens import TokenTable
from ingest.sources.relay.urls import (
    relay_base_url,
    relay_conversation_url,
    token_of,
    upstream_public_url,
    upstream_signed_url,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def table(clock: Clock, **options: object) -> TokenTable:
    counter = itertools.count()
    return TokenTable(clock, new_token=lambda: f"t{next(counter)}", **options)  # type: ignore[arg-type]


def test_a_token_is_good_once_for_its_agent_until_it_expires() -> None:
    clock = Clock()
    tokens = table(clock, ttl=10)
    a, b, c = (tokens.issue("agent_a", f"wss://x/{i}") for i in range(3))
    assert tokens.redeem(a, "agent_b") is None  # another agent's: and it is used up
    assert tokens.redeem(a, "agent_a") is None
    assert tokens.redeem(b, "agent_a") == "wss://x/1"
    assert tokens.redeem(b, "agent_a") is None
    clock.now += 10
    assert tokens.redeem(c, "agent_a") is None
    assert tokens.redeem("unknown", "agent_a") is None


def test_the_table_is_bounded_and_forgets_expired_tokens() -> None:
    clock = Clock()
    tokens = table(clock, ttl=10, max_tokens=3)
    issued = [tokens.issue("a", str(i)) for i in range(5)]
    assert len(tokens) == 3
    assert tokens.redeem(issued[0], "a") is None and tokens.redeem(issued[4], "a") == "4"
    clock.now += 11
    tokens.issue("a", "new")
    assert len(tokens) == 1


def test_the_relay_token_travels_in_the_platforms_parameter() -> None:
    assert token_of("agent_id=a&conversation_signature=abc%2Bd") == "abc+d"
    assert token_of("agent_id=a&token=xyz") == "xyz"
    assert token_of("agent_id=a&source=js_sdk") is None
    url = relay_conversation_url("wss://relay.example.com", "agent a", "t/1")
    assert (
        url
        == "wss://relay.example.com/v1/convai/conversation?agent_id=agent%20a&conversation_signature=t%2F1"
    )


def test_upstream_urls_keep_the_clients_parameters_byte_for_byte() -> None:
    signed = "wss://api.elevenlabs.io/v1/convai/conversation?agent_id=a&conversation_signature=S"
    client = (
        "agent_id=a&conversation_signature=T&source=python_sdk&version=2.78.0&environment=st%C3%A1ging&x=a+b"
    )
    assert (
        upstream_signed_url(signed, client)
        == signed + "&source=python_sdk&version=2.78.0&environment=st%C3%A1ging&x=a+b"
    )
    assert upstream_signed_url(signed, "agent_id=a&token=T") == signed
    assert (
        upstream_signed_url(signed + "&environment=prod", "environment=dev") == signed + "&environment=prod"
    )
    with pytest.raises(ConfigError):
        upstream_signed_url("https://api.elevenlabs.io/x", "")
    assert upstream_public_url("https://api.eu.residency.elevenlabs.io", "agent_id=a&source=js_sdk") == (
        "wss://api.eu.residency.elevenlabs.io/v1/convai/conversation?agent_id=a&source=js_sdk"
    )


def test_the_relay_url_follows_the_public_url_or_the_request() -> None:
    base = {"listen_host": "0.0.0.0", "port": 8766}
    assert relay_base_url(public_url="https://relay.example.com", host="x", forwarded_proto=None, **base) == (
        "wss://relay.example.com"
    )
    assert (
        relay_base_url(public_url=None, host="relay:443", forwarded_proto="https", **base)
        == "wss://relay:443"
    )
    assert (
        relay_base_url(public_url=None, host="10.0.0.5:8766", forwarded_proto=None, **base)
        == "ws://10.0.0.5:8766"
    )
    assert relay_base_url(public_url=None, host=None, forwarded_proto=None, **base) == "ws://127.0.0.1:8766"


def test_access_checks_the_relay_token_first_then_the_allow_list() -> None:
    guarded = RelayConfig(agent_ids=["agent_a"], relay_token="r" * 16)
    assert signed_url_refusal(guarded, "agent_a", "r" * 16) is None
    for key in (None, "", "r" * 15, "r" * 17):
        refusal = signed_url_refusal(guarded, "agent_x", key)
        assert refusal is not None and refusal.status == 401
    refusal = signed_url_refusal(guarded, "agent_x", "r" * 16)
    assert refusal is not None and (refusal.status, orjson.loads(refusal.body())["detail"]["status"]) == (
        403,
        "agent_not_allowed",
    )
    refusal = signed_url_refusal(guarded, None, "r" * 16)
    assert refusal is not None and refusal.status == 422
    open_ = RelayConfig(agent_ids=["agent_a"])
    assert signed_url_refusal(open_, "agent_a", None) is None
    assert socket_refusal(guarded, "agent_a") is None


def test_audio_is_counted_and_everything_else_is_a_frame_to_log() -> None:
    session = RelaySession("agent_a", "c1")
    assert session.from_client('{"type":"conversation_initiation_client_data"}') is not None
    assert session.from_client('{"user_audio_chunk":"AAAA"}') is None
    assert session.from_client('{"user_audio_chunk": "AAAA"}') is None
    assert not is_client_audio('{"user_audio_chunk_size":1}') and not is_client_audio(
        b'{"user_audio_chunk":""}'
    )
    assert (
        session.from_platform('{"type":"audio","audio_event":{"audio_base_64":"AAAA","event_id":1}}') is None
    )
    assert session.origin_in.conversation_id is None
    metadata = '{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{"conversation_id":"conv_1"}}'
    frame = session.from_platform(metadata)
    assert frame is not None and frame.data == metadata
    assert session.origin_in.conversation_id == session.origin_out.conversation_id == "conv_1"
    assert (session.origin_in.source, session.origin_in.direction, session.origin_out.direction) == (
        "relay",
        "in",
        "out",
    )
    raw = session.from_client("not json {")
    assert raw is not None and raw.message is None  # kept raw in the log
    record = session.closed_record(
        close_code=1000, close_reason="", closed_by=ClosedBy.CLIENT, duration_s=1.23456
    )
    assert record.message == {
        "type": "connection_closed", "close_code": 1000, "close_reason": "", "closed_by": "client",
        "duration_s": 1.235, "frames": 3, "audio_skipped": 3,
        "frames_in": 1, "frames_out": 2, "audio_in": 1, "audio_out": 2,
    }  # fmt: skip
    assert session.closed_origin().source == "capture"
