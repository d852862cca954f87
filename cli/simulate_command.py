"""``capture simulate``: the local fake Agents server, for trying capture without credentials."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from ingest.errors import ConfigError
from ingest.signals import stop_on_signals
from ingest.simulator import SCENARIOS, Scenario, Simulator, scenario_from_name

from .output import console, reporting_errors


__all__ = ["register", "scenarios_from_names"]


def scenarios_from_names(names: list[str]) -> list[Scenario]:
    """Resolve ``--scenario`` names, turning an unknown one into a :class:`ConfigError`."""
    try:
        return [scenario_from_name(name) for name in names]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


async def _serve(sim: Simulator) -> None:
    stop = asyncio.Event()
    with stop_on_signals(asyncio.get_running_loop(), stop):
        async with sim:
            console.print(
                f"simulator listening on [bold]{sim.http_url}[/bold] (agents: {', '.join(sorted(sim.agent_ids))})\n"
                f"try: capture ingest --base-url {sim.http_url} --agent-id {min(sim.agent_ids)}",
                highlight=False,
            )
            await stop.wait()


def register(app: typer.Typer) -> None:
    """Add ``simulate`` to ``app``."""

    @app.command("simulate")
    def simulate_command(
        host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[
            int, typer.Option("--port", min=0, max=65535, help="Port; 0 picks a free one.")
        ] = 8765,
        agent_id: Annotated[
            list[str] | None, typer.Option("--agent-id", help="Known agent ids (repeatable).")
        ] = None,
        require_api_key: Annotated[
            str | None,
            typer.Option(
                "--require-api-key",
                envvar="SIMULATOR_API_KEY",
                help="Make agents private: signed URLs need this xi-api-key.",
                show_default=False,
            ),
        ] = None,
        scenario: Annotated[
            list[str] | None,
            typer.Option(
                "--scenario",
                help=f"Scenario of connection 1, 2, … in order (repeatable): {', '.join(SCENARIOS)}.",
            ),
        ] = None,
        default: Annotated[
            str, typer.Option("--default", help="Scenario of every connection after those.")
        ] = "normal",
        ping_interval: Annotated[
            float, typer.Option("--ping-interval", min=0.01, help="Seconds between pings.")
        ] = 1.0,
        pong_deadline: Annotated[
            float, typer.Option("--pong-deadline", min=0.01, help="Close 1002 if a pong is this late.")
        ] = 5.0,
    ) -> None:
        """Run a local fake ElevenLabs Agents server (signed URLs, the WebSocket, scripted faults)."""
        with reporting_errors():
            script = scenarios_from_names(scenario or [])
            (fallback,) = scenarios_from_names([default])
            sim = Simulator(
                host=host,
                port=port,
                agent_ids=agent_id or ["agent_demo"],
                api_key=require_api_key,
                script=script,
                default=fallback,
                ping_interval=ping_interval,
                pong_deadline=pong_deadline,
            )
            try:
                asyncio.run(_serve(sim))
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {host}:{port}: {exc.strerror or exc}; try --port 0"
                ) from exc
