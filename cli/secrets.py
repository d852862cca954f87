"""The secrets a command reads from the environment, never from a flag, and keeps out of child processes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cli.process_log import hide
from ingest.secrets import API_KEY_ENV, RELAY_TOKEN_ENV, SECRET_ENV_VARS, WEBHOOK_SECRET_ENV


__all__ = ["API_KEY_ENV", "RELAY_TOKEN_ENV", "WEBHOOK_SECRET_ENV", "Secrets", "take_secrets"]


@dataclass(frozen=True)
class Secrets:
    """The API key, webhook secret and relay token; each ``""`` when unset. Never printed."""

    api_key: str = field(repr=False)
    webhook_secret: str = field(repr=False)
    relay_token: str = field(repr=False)


def take_secrets() -> Secrets:
    """Read every secret from the environment and remove it there.

    Call it once, before anything starts: from then on the secrets live only in
    this process's memory, and no child process (the live projection) inherits
    one, whether the command uses it or not. The process log redacts them.

    """
    values = [os.environ.pop(name, "") for name in SECRET_ENV_VARS]
    hide(*values)
    return Secrets(*values)
