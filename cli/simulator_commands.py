"""``capture simulate`` and ``capture demo``: the local fake ElevenLabs, for trying capture without credentials."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, cast

import aiohttp
import orjson
import typer
from rich.table import Table
from rich.text import Text

from cli.options import DataDir, Quiet, Verbose
from cli.output import console, reporting_errors, show
from cli.process_log import hide, setup_logging
from ingest.errors import CaptureError, ConfigError
from ingest.simulator import (
    CHANNELS,
    SCENARIOS,
    AccountSpec,
    Channel,
    DeliveryFactory,
    Scenario,
    Signing,
    Simulator,
    scenario_from_name,
    send_many,
)
from ingest.sources import AgentConfig, LogSettings, run_agent, run_source
from ingest.sources.signals import stop_on_signals
from projections import project
from projections.sqlite import default_db_path


__all__ = ["register", "scenarios_from_names"]


def scenarios_from_names(names: list[str]) -> list[Scenario]:
    """Resolve ``--scenario`` names, turning an unknown one into a :class:`ConfigError`."""
    try:
        return [scenario_from_name(name) for name in names]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _account_spec(
    conversations: int, agent_id: str, in_progress: int, channels: list[str]
) -> AccountSpec | None:
    """The ``--account`` history the simulator serves, or ``None`` for none.

    Raises:
        ConfigError: ``--in-progress`` is more than ``--account``, or a ``--channel`` is unknown.

    """
    if in_progress > conversations:
        raise ConfigError(
            f"--in-progress {in_progress} is more than --account {conversations}: "
            "the live conversations are some of the account's"
        )
    if not conversations:
        return None
    unknown = [channel for channel in channels if channel not in CHANNELS]
    if unknown:
        raise ConfigError(f"unknown --channel {unknown[0]!r}; valid: {', '.join(CHANNELS)}")
    # A few conversations start as "processing" (ended, not yet analysed):
    # AccountSpec's 3, or a quarter of the finished ones in a small account.
    processing = min(AccountSpec.processing, (conversations - in_progress) // 4)
    return AccountSpec(
        conversations=conversations,
        agent_id=agent_id,
        in_progress=in_progress,
        processing=processing,
        channels=cast("tuple[Channel, ...]", tuple(channels)),  # checked above
    )


async def _send_webhooks(sim: Simulator, url: str, secret: str, bad_every: int) -> None:
    """POST a signed ``post_call_transcription`` for each finished account conversation (some badly signed)."""
    factory = DeliveryFactory(secret, agent_id=min(sim.agent_ids))
    deliveries = []
    bad = [s for s in Signing if s is not Signing.VALID]
    finished = sim.account.of_agent(min(sim.agent_ids), "done", "failed") if sim.account else []
    for i, conversation in enumerate(finished, start=1):
        signing = bad[(i // bad_every) % len(bad)] if bad_every and i % bad_every == 0 else Signing.VALID
        data = orjson.loads(sim.account.body(conversation.conversation_id)) if sim.account else None
        deliveries.append(factory.transcription(signing=signing, data=data))
    if not deliveries:
        deliveries = factory.mix(10, bad_every=bad_every)
    statuses: list[int] = []
    try:
        statuses = await send_many(url, deliveries)
    except* (CaptureError, aiohttp.ClientError) as group:
        console.print(f"[red]webhooks to {url} failed:[/red] {group.exceptions[0]}", highlight=False)
    if not statuses:
        return
    accepted = sum(1 for status in statuses if status == 200)
    console.print(
        f"sent {len(deliveries)} webhooks to {url}: {accepted} answered 200, "
        f"{len(deliveries) - accepted} refused (badly signed on purpose: every {bad_every}th)",
        highlight=False,
    )


async def _serve(sim: Simulator, webhook_url: str | None, webhook_secret: str | None, bad_every: int) -> None:
    stop = asyncio.Event()
    with stop_on_signals(asyncio.get_running_loop(), stop):
        async with sim:
            console.print(
                f"simulator listening on [bold]{sim.http_url}[/bold] (agents: {', '.join(sorted(sim.agent_ids))})\n"
                f"try: capture ingest --base-url {sim.http_url} --agent-id {min(sim.agent_ids)}",
                highlight=False,
            )
            if webhook_url and webhook_secret:
                await _send_webhooks(sim, webhook_url, webhook_secret, bad_every)
            await stop.wait()


@dataclass(frozen=True)
class _Conversation:
    user_id: str
    spoken: list[str]
    typed: list[str]


_DEMO_SCRIPT = [
    _Conversation(
        "demo-ana",
        ["Hi, I was charged twice for my subscription.", "The second charge was on the third."],
        ["Can you refund the duplicate?"],
    ),
    _Conversation(
        "demo-joão",
        ["Olá, quero mudar o meu plano.", "Para o plano anual, por favor."],
        ["Obrigado! 🙏"],
    ),
    _Conversation(
        "demo-kim",
        ["Where is my order?"],
        ["Order number 48213", "Thanks, that's all."],
    ),
]


async def _typed(lines: list[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line
    # Keep the input open: the simulator ends the conversation after its script.
    await asyncio.Event().wait()


async def _hold_one(data_dir: Path, agent: AgentConfig, typed: list[str]) -> None:
    lines = _typed(typed)
    await run_source(
        lambda writer, stop: run_agent(writer, agent, stop, user_lines=lines, max_conversations=1),
        LogSettings(data_dir),
        handle_signals=False,
    )


async def _run_demo(data_dir: Path, conversations: int) -> list[str]:
    plan = [_DEMO_SCRIPT[i % len(_DEMO_SCRIPT)] for i in range(conversations)]
    script = [Scenario(name="demo", user_turns=c.spoken, end="close", linger=0.3) for c in plan]
    conversation_ids: list[str] = []
    async with Simulator(script=script, ping_interval=0.2) as sim:
        for conversation in plan:
            agent = AgentConfig(agent_id="agent_demo", base_url=sim.http_url, user_id=conversation.user_id)
            await _hold_one(data_dir, agent, conversation.typed)
            conversation_id = sim.connections[-1].conversation_id
            if conversation_id:
                conversation_ids.append(conversation_id)
    return conversation_ids


def register(app: typer.Typer) -> None:
    """Add ``simulate`` and ``demo`` to ``app``."""

    @app.command("simulate")
    def simulate_command(
        host: Annotated[
            str, typer.Option("--host", metavar="HOST", help="Interface to listen on.")
        ] = "127.0.0.1",
        port: Annotated[
            int, typer.Option("--port", min=0, max=65535, metavar="PORT", help="Port; 0 picks a free one.")
        ] = 8765,
        agent_id: Annotated[
            list[str] | None,
            typer.Option(
                "--agent-id", metavar="ID", help="Known agent ids (repeatable; default agent_demo)."
            ),
        ] = None,
        require_api_key: Annotated[
            str | None,
            typer.Option(
                "--require-api-key",
                envvar="SIMULATOR_API_KEY",
                metavar="KEY",
                help="Make agents private: signed URLs need this xi-api-key.",
                show_default=False,
            ),
        ] = None,
        scenario: Annotated[
            list[str] | None,
            typer.Option(
                "--scenario",
                metavar="NAME",
                help=f"Scenario of connection 1, 2, … in order (repeatable): {', '.join(SCENARIOS)}.",
            ),
        ] = None,
        default: Annotated[
            str, typer.Option("--default", metavar="NAME", help="Scenario of every connection after those.")
        ] = "normal",
        ping_interval: Annotated[
            float, typer.Option("--ping-interval", min=0.01, metavar="SECONDS", help="Seconds between pings.")
        ] = 1.0,
        pong_deadline: Annotated[
            float,
            typer.Option(
                "--pong-deadline", min=0.01, metavar="SECONDS", help="Close 1002 if a pong is this late."
            ),
        ] = 5.0,
        account: Annotated[
            int,
            typer.Option(
                "--account", min=0, help="Serve this many past conversations on the Conversations REST API."
            ),
        ] = 0,
        in_progress: Annotated[
            int,
            typer.Option("--in-progress", min=0, help="Of those, how many are live (for `capture monitor`)."),
        ] = 0,
        channel: Annotated[
            list[str] | None,
            typer.Option(
                "--channel",
                help=f"Account conversations happen on these channels in turn (repeatable): {', '.join(CHANNELS)}.",
                show_default=False,
            ),
        ] = None,
        monitor_enabled: Annotated[
            bool,
            typer.Option("--monitor/--no-monitor", help="Serve the monitor socket (else refuse it 403)."),
        ] = True,
        webhook_url: Annotated[
            str | None,
            typer.Option(
                "--webhook-url",
                metavar="URL",
                help="Send signed post-call webhooks (one per finished account conversation) to this URL.",
                show_default=False,
            ),
        ] = None,
        webhook_secret: Annotated[
            str | None,
            typer.Option(
                "--webhook-secret",
                envvar="SIMULATOR_WEBHOOK_SECRET",
                metavar="SECRET",
                help="The HMAC secret to sign webhooks with.",
                show_default=False,
            ),
        ] = None,
        bad_every: Annotated[
            int, typer.Option("--bad-every", min=0, help="Sign every n-th webhook badly (0: none).")
        ] = 5,
        verbose: Verbose = 0,
        quiet: Quiet = False,
    ) -> None:
        """Run a local fake ElevenLabs Agents server (signed URLs, the WebSocket, scripted faults).

        With --account it also serves the Conversations REST API (pagination, 429s, unfinished
        conversations) and the monitor socket; with --webhook-url it sends signed post-call webhooks.
        """
        setup_logging(verbose, quiet)
        with reporting_errors():
            hide(require_api_key or "", webhook_secret or "")
            if webhook_url and not webhook_secret:
                raise ConfigError("--webhook-url needs --webhook-secret or SIMULATOR_WEBHOOK_SECRET")
            agents = agent_id or ["agent_demo"]
            script = scenarios_from_names(scenario or [])
            (fallback,) = scenarios_from_names([default])
            sim = Simulator(
                host=host,
                port=port,
                agent_ids=agents,
                api_key=require_api_key,
                script=script,
                default=fallback,
                ping_interval=ping_interval,
                pong_deadline=pong_deadline,
                account=_account_spec(account, min(agents), in_progress, channel or []),
                monitor_enabled=monitor_enabled,
            )
            try:
                asyncio.run(_serve(sim, webhook_url, webhook_secret, bad_every))
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc}; try --port 0"
                ) from exc

    @app.command("demo")
    def demo_command(
        data_dir: DataDir = Path("data"),
        conversations: Annotated[
            int, typer.Option("--conversations", min=1, max=50, help="How many conversations to hold.")
        ] = 3,
        verbose: Verbose = 0,
    ) -> None:
        """Start the simulator, capture a few conversations into the data dir, and show what was captured."""
        setup_logging(verbose, quiet=not verbose)
        with reporting_errors():
            console.print(
                f"capturing {conversations} conversations from the local simulator into {data_dir} …"
            )
            conversation_ids = asyncio.run(_run_demo(data_dir, conversations))
            db_path = default_db_path(data_dir)
            report = project(data_dir, db_path)
        marks = ",".join("?" * len(conversation_ids))
        with sqlite3.connect(db_path) as db:
            rows = db.execute(
                f"SELECT session_id, user_id, kind, text FROM user_texts WHERE session_id IN ({marks}) ORDER BY seq",
                conversation_ids,
            ).fetchall()
        db.close()
        table = Table(title="what your users said (SQLite user_texts)", title_justify="left")
        for column in ("conversation", "user", "kind", "text"):
            table.add_column(column)
        for session_id, user_id, kind, text in rows:
            table.add_row(Text(session_id), Text(user_id), Text(kind), Text(text))
        show(table)
        console.print(
            f"log: {data_dir / 'events'}   table: {db_path} ({report.rows_written} new rows)\n"
            f"next: capture status --data-dir {data_dir}\n"
            f'      capture sql --data-dir {data_dir} "SELECT * FROM conversations"',
            highlight=False,
        )
