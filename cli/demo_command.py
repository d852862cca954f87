"""``capture demo``: the whole pipeline against the bundled simulator, no credentials needed."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.options import DataDir
from cli.output import console, reporting_errors
from ingest.simulator.server import Scenario, Simulator
from ingest.sources.agent.client import AgentConfig
from ingest.sources.run import IngestSettings, ingest
from projections import default_db_path, project


__all__ = ["register"]


@dataclass(frozen=True)
class _Conversation:
    user_id: str
    spoken: list[str]
    typed: list[str]


_SCRIPT = [
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


async def _run_demo(data_dir: Path, conversations: int) -> list[str]:
    plan = [_SCRIPT[i % len(_SCRIPT)] for i in range(conversations)]
    script = [Scenario(name="demo", user_turns=c.spoken, end="close", linger=0.3) for c in plan]
    conversation_ids: list[str] = []
    async with Simulator(script=script, ping_interval=0.2) as sim:
        for conversation in plan:
            agent = AgentConfig(agent_id="agent_demo", base_url=sim.http_url, user_id=conversation.user_id)
            settings = IngestSettings(data_dir=data_dir, max_conversations=1)
            await ingest(agent, settings, user_lines=_typed(conversation.typed), handle_signals=False)
            conversation_id = sim.connections[-1].conversation_id
            if conversation_id:
                conversation_ids.append(conversation_id)
    return conversation_ids


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""

    @app.command("demo")
    def demo_command(
        data_dir: DataDir = Path("data"),
        conversations: Annotated[
            int, typer.Option("--conversations", min=1, max=50, help="How many conversations to hold.")
        ] = 3,
    ) -> None:
        """Start the simulator, capture a few conversations into the data dir, and show what was captured."""
        logging.getLogger().setLevel(logging.WARNING)
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
        table = Table(title="what your users said (SQLite user_texts)")
        for column in ("conversation", "user", "kind", "text"):
            table.add_column(column)
        for session_id, user_id, kind, text in rows:
            table.add_row(session_id, user_id, kind, text)
        console.print(table)
        console.print(
            f"log: {data_dir / 'events'}   table: {db_path} ({report.rows_written} new rows)\n"
            f"next: capture status --data-dir {data_dir}\n"
            f'      capture sql --data-dir {data_dir} "SELECT * FROM conversations"',
            highlight=False,
        )
