"""What an ended connection means: a short conversation is still a conversation; an empty one backs off."""

from __future__ import annotations

import random

import pytest

from ingest.sources.reconnect import (
    RECONNECT_CAUSES,
    Backoff,
    Ended,
    ReconnectPolicy,
    Verdict,
    cause_of,
    classify,
)


POLICY = ReconnectPolicy()  # the defaults a user gets: healthy after 10 s


@pytest.mark.parametrize(
    ("ended", "verdict"),
    [
        (Ended(opened=True, lived=0.3, close_code=1000, user_turns=2), Verdict.NORMAL),
        (Ended(opened=True, lived=12.0, close_code=1000), Verdict.NORMAL),
        (Ended(opened=True, lived=0.3, close_code=1000), Verdict.FAILURE),
        (Ended(opened=True, lived=0.3, close_code=1011, user_turns=2), Verdict.FAILURE),
        (Ended(opened=True, lived=0.3, close_code=1006, user_turns=2), Verdict.FAILURE),
        (Ended(opened=False, http_status=404), Verdict.FATAL),
    ],
)
def test_classify(ended: Ended, verdict: Verdict) -> None:
    assert classify(ended, POLICY).verdict is verdict


def test_accept_then_close_still_says_why() -> None:
    decision = classify(Ended(opened=True, lived=0.2, close_code=1000), POLICY)
    assert decision.reason == "closed normally after only 0.2 s, before any user turn"


def test_a_conversation_with_user_turns_resets_the_backoff() -> None:
    backoff = Backoff(POLICY, random.Random(1))
    empty = Ended(opened=True, lived=0.1, close_code=1000)
    delays = [backoff.next_delay(classify(empty, POLICY), empty) for _ in range(4)]
    assert delays[-1] > delays[1] > 0  # growing
    talked = Ended(opened=True, lived=0.1, close_code=1000, user_turns=1)
    assert backoff.next_delay(classify(talked, POLICY), talked) == POLICY.normal_pause
    first_again = backoff.next_delay(classify(empty, POLICY), empty)
    assert first_again < POLICY.initial_delay  # the series starts over


def test_each_end_has_a_cause_from_a_bounded_set() -> None:
    """cause_of names why a connection ended in capture's words, whatever close code the server sent."""
    policy = ReconnectPolicy(healthy_after=10.0)
    cases = {
        Ended(opened=True, lived=30.0, close_code=1000): "normal",
        Ended(opened=True, lived=0.1, close_code=1000): "short_conversation",
        Ended(opened=False, failure="Connection refused"): "network",
        Ended(opened=False, http_status=429): "http_429",
        Ended(opened=False, http_status=503): "http_5xx",
        Ended(opened=True, lived=2.0, close_code=1011): "close_1011",
        Ended(opened=True, lived=2.0, close_code=1006): "close_1006",
        Ended(opened=True, lived=2.0, close_code=4123): "close_other",
        Ended(opened=True, lived=2.0, close_code=3000): "close_other",
    }
    for ended, cause in cases.items():
        assert cause_of(ended, classify(ended, policy)) == cause
        assert cause in RECONNECT_CAUSES
