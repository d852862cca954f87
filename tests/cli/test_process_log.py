"""The process log: as much detail as asked for, and never a secret."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from cli.process_log import REDACTED, hide, redact, setup_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    names = ("capture", "ingest", "projections", "cli", "websockets", "capture.monitor.socket")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "connecting to wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent_1&conversation_signature=abc.DEF-1",
            f"connecting to wss://api.elevenlabs.io/v1/convai/conversation?agent_id=agent_1&conversation_signature={REDACTED}",
        ),
        ("GET /x?token=t0k3n&api_key=k&page=2", f"GET /x?token={REDACTED}&api_key={REDACTED}&page=2"),
        (
            '{"signed_url": "wss://h/p?conversation_signature=s1"}',
            f'{{"signed_url": "wss://h/p?conversation_signature={REDACTED}"}}',
        ),
        ("> xi-api-key: sk_1234", f"> xi-api-key: {REDACTED}"),
        ("> Authorization: Bearer abc\n> Host: x", f"> Authorization: {REDACTED}\n> Host: x"),
        ("agent_id=agent_1&user_id=u", "agent_id=agent_1&user_id=u"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_hidden_values_are_redacted_anywhere() -> None:
    hide("wsec_the_webhook_secret", "")
    assert redact("verifying with wsec_the_webhook_secret.") == f"verifying with {REDACTED}."


def _levels(verbose: int, quiet: bool) -> tuple[bool, bool, bool, bool]:
    setup_logging(verbose, quiet)
    ours, library = logging.getLogger("capture.ingest"), logging.getLogger("websockets.client")
    socket = logging.getLogger("capture.monitor.socket")
    return (
        ours.isEnabledFor(logging.INFO),
        ours.isEnabledFor(logging.DEBUG),
        library.isEnabledFor(logging.DEBUG),
        socket.isEnabledFor(logging.DEBUG),
    )


def test_levels() -> None:
    """Default: capture's lines; -v its detail; -vv the libraries' detail too; -q warnings only."""
    assert _levels(0, False) == (True, False, False, False)
    assert _levels(1, False) == (True, True, False, False)
    assert _levels(2, False) == (True, True, True, True)
    assert _levels(0, True) == (False, False, False, False)
    assert logging.getLogger("websockets.client").isEnabledFor(logging.WARNING)


def test_every_line_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(1)
    logging.getLogger("capture.test").debug("url %s", "wss://h/p?conversation_signature=secret1")
    err = capsys.readouterr().err
    assert "secret1" not in err and f"conversation_signature={REDACTED}" in err
