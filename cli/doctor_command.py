"""``capture doctor``: the checks a new deployment needs, one line each; exit 0 only if all pass."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.options import AgentId, BaseUrl, DataDir, DbPath
from cli.output import console
from cli.secrets import take_secrets
from cli.sql_command import DuckdbPath
from ingest.sources.urls import DEFAULT_BASE_URL


if TYPE_CHECKING:
    from ingest.observe.health import Check


__all__ = ["register"]


def run_checks(
    agent_id: str | None,
    base_url: str,
    data_dir: Path,
    db: Path | None,
    duckdb_path: Path | None,
    webhook_configured: bool,
) -> list[Check]:
    """Every check, in the order a deployment meets them."""
    from ingest.log.lock import probe_lock
    from ingest.observe.doctor import data_dir_checks, lock_check, platform_checks, webhook_secret_check
    from projections.health import projection_check, views_check

    secrets = take_secrets()
    checks = asyncio.run(platform_checks(base_url, agent_id, secrets.api_key))
    checks.append(webhook_secret_check(webhook_configured, secrets.webhook_secret))
    checks.extend(data_dir_checks(data_dir))
    holder = probe_lock(data_dir)
    checks.append(lock_check(data_dir, holder, probe=False))
    checks.append(projection_check(data_dir, db, live=holder is not None))
    checks.append(views_check(data_dir, duckdb_path))
    return checks


def register(app: typer.Typer) -> None:
    """Add ``doctor`` to ``app``."""

    @app.command("doctor")
    def doctor_command(
        agent_id: AgentId = None,
        base_url: BaseUrl = DEFAULT_BASE_URL,
        data_dir: DataDir = Path("data"),
        db: DbPath = None,
        duckdb_path: DuckdbPath = None,
        webhook_port: Annotated[
            int | None,
            typer.Option(
                "--webhook-port",
                min=0,
                max=65535,
                metavar="PORT",
                help="The deployment receives webhooks (as `capture ingest --webhook-port`): "
                "ELEVENLABS_WEBHOOK_SECRET must be set.",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        """Check what a new deployment gets wrong: key and agent, webhook secret, data dir, lock, projection, views, clock.

        One line per check (ok, warn, FAIL); exit 0 only if every check passes (a warning passes), 1 otherwise.
        Reads ELEVENLABS_API_KEY and ELEVENLABS_WEBHOOK_SECRET from the environment; prints neither.
        """
        checks = run_checks(agent_id, base_url, data_dir, db, duckdb_path, webhook_port is not None)
        width = max(len(check.name) for check in checks)
        for check in checks:
            mark = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "FAIL": "[red]FAIL[/]"}[check.mark]
            console.print(
                f"{mark} {check.name.ljust(width)}  {check.detail}", highlight=False, soft_wrap=True
            )
        if not all(check.ok for check in checks):
            raise typer.Exit(1)
