"""The process log on stderr: how much of it to show, and no secret in it.

Levels: by default capture's own lines (one per connection, warnings) and the
libraries' warnings; ``-q`` only warnings and errors; ``-v`` capture's own
detail too; ``-vv`` the libraries' detail as well (websockets' per-frame
debug, aiohttp's). Every line is redacted as it is formatted: the secrets
this process read (see :mod:`cli.secrets`), URL parameters that carry a
credential (a signed URL's ``conversation_signature``, ``token``, ``api_key``
…) and credential headers (``xi-api-key``, ``Authorization``, ``Cookie`` …)
become ``<redacted>``, wherever the line comes from.

"""

from __future__ import annotations

import logging
import re
import sys


__all__ = ["REDACTED", "hide", "redact", "setup_logging"]

REDACTED = "<redacted>"

# Capture's own loggers ("capture.*" and the module-named ones).
_OURS = ("capture", "ingest", "projections", "cli")
# websockets logs each connection's frames through these (the monitor's and
# the relay's sockets): that is library detail, shown from -vv.
_SOCKETS = ("capture.monitor.socket", "capture.relay.socket")

_CREDENTIAL_PARAMETER = re.compile(
    r"([?&;][^=&#\s]*(?:signature|token|secret|password|passwd|api[-_]?key|auth)[^=&#\s]*=)[^&#\s'\"<>]+",
    re.IGNORECASE,
)
_CREDENTIAL_HEADER = re.compile(
    r"((?:xi-api-key|authorization|proxy-authorization|cookie|set-cookie|elevenlabs-signature)\s*:\s*)[^\r\n]+",
    re.IGNORECASE,
)

_hidden: set[str] = set()


def hide(*values: str) -> None:
    """Redact these exact values (the API key, the webhook secret, a token) from every later log line."""
    _hidden.update(value for value in values if value)


def redact(text: str) -> str:
    """Return ``text`` with every secret, credential URL parameter and credential header redacted."""
    for value in sorted(_hidden, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = _CREDENTIAL_PARAMETER.sub(rf"\1{REDACTED}", text)
    return _CREDENTIAL_HEADER.sub(rf"\1{REDACTED}", text)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Send the process log to stderr, at the detail asked for (``-v`` counted, ``-q``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Levels on the loggers, not a filter on the handler: websockets decides
    # once per connection whether to build its per-frame debug lines at all.
    libraries = logging.DEBUG if verbose >= 2 and not quiet else logging.WARNING
    ours = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    root.setLevel(libraries)
    for name in _OURS:
        logging.getLogger(name).setLevel(ours)
    for name in _SOCKETS:
        logging.getLogger(name).setLevel(libraries)
