"""``capture webhook``: receive ElevenLabs post-call webhooks into the log."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer

from cli.options import DataDir, parse_size
from cli.output import console, reporting_errors, setup_logging
from ingest.errors import ConfigError
from ingest.log.writer import FsyncPolicy
from ingest.sources.webhook.receiver import DEFAULT_MAX_BODY, DEFAULT_PATH, WebhookConfig, serve_webhooks


__all__ = ["SECRET_ENV", "register"]

SECRET_ENV = "ELEVENLABS_WEBHOOK_SECRET"

FSYNC_HELP = (
    "A 200 always waits until the delivery is on stable storage. 'interval' (default) and 'never': "
    "an fsync shared by the deliveries in flight (group commit, off the event loop). "
    "'always': one fsync per delivery, inside the append."
)


def _max_body(text: str) -> int:
    try:
        return parse_size(text)
    except ConfigError:
        raise ConfigError(f"--max-body {text!r} is not a size; use e.g. 16MiB or 1000000") from None


def register(app: typer.Typer) -> None:
    """Add ``webhook`` to ``app``."""

    @app.command("webhook")
    def webhook_command(
        host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[
            int, typer.Option("--port", min=0, max=65535, help="Port; 0 picks a free one.")
        ] = 8080,
        path: Annotated[str, typer.Option("--path", help="The URL path ElevenLabs posts to.")] = DEFAULT_PATH,
        data_dir: DataDir = Path("data"),
        fsync: Annotated[FsyncPolicy, typer.Option("--fsync", help=FSYNC_HELP)] = FsyncPolicy.INTERVAL,
        max_body: Annotated[
            str,
            typer.Option(
                "--max-body",
                help="Larger bodies are refused with 413, except post_call_audio (read, never stored).",
            ),
        ] = f"{DEFAULT_MAX_BODY // 2**20}MiB",
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
    ) -> None:
        """Receive post-call webhooks: verify, append to the log, fsync, then answer 200.

        The HMAC secret comes from ELEVENLABS_WEBHOOK_SECRET, never from a flag.
        Missing, malformed, stale (over 30 min) or wrong signature: 401 (a future one is accepted).
        Refused deliveries are never stored; a replayed delivery is stored again.
        post_call_audio is answered 200; its audio is never stored.
        Put it behind a TLS reverse proxy: ElevenLabs posts to https URLs.
        SIGTERM / Ctrl-C: finish deliveries in flight, fsync, unlock, exit 0.
        """
        setup_logging(verbose)
        with reporting_errors():
            secret = os.environ.get(SECRET_ENV) or ""
            if not secret.strip():
                raise ConfigError(f"no webhook secret: set {SECRET_ENV} (from the agent's webhook settings)")
            config = WebhookConfig(
                secret=secret, host=host, port=port, path=path, max_body=_max_body(max_body)
            )
            stats = asyncio.run(serve_webhooks(config, data_dir, fsync=fsync))
        console.print(str(stats), highlight=False, soft_wrap=True)
