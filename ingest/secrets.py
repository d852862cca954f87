"""The environment variables that hold secrets: read once, never logged, never passed to a child.

A command reads them at start (``cli.secrets.take_secrets`` removes them from
its environment); anything that starts a child process builds the child's
environment with :func:`without_secrets`, so that a library caller who left
them in ``os.environ`` does not leak them either.

"""

from __future__ import annotations

from collections.abc import Mapping


__all__ = ["API_KEY_ENV", "RELAY_TOKEN_ENV", "SECRET_ENV_VARS", "WEBHOOK_SECRET_ENV", "without_secrets"]

API_KEY_ENV = "ELEVENLABS_API_KEY"
WEBHOOK_SECRET_ENV = "ELEVENLABS_WEBHOOK_SECRET"
RELAY_TOKEN_ENV = "CAPTURE_RELAY_TOKEN"

#: Every variable whose value must stay in the process that read it.
SECRET_ENV_VARS = (API_KEY_ENV, WEBHOOK_SECRET_ENV, RELAY_TOKEN_ENV)


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of ``environ`` without the variables that hold secrets."""
    return {name: value for name, value in environ.items() if name not in SECRET_ENV_VARS}
