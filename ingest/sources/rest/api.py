"""The Conversations REST API's shapes: URLs, list queries, list pages, statuses. Pure.

See ``docs/elevenlabs-protocol.md`` §6b (list and get) and §6c (the monitor
socket's URL). Nothing here does I/O; :mod:`ingest.sources.rest.client` sends the
requests and :mod:`ingest.sources.rest.backfill` / :mod:`ingest.sources.monitor` decide what to do.

"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from ingest.sources.urls import http_base_url, ws_base_url


__all__ = [
    "FINISHED",
    "LIST_PATH",
    "LIVE",
    "MAX_PAGE_SIZE",
    "Page",
    "Summary",
    "conversation_url",
    "list_params",
    "list_url",
    "monitor_url",
    "parse_page",
]

LIST_PATH = "/v1/convai/conversations"
MAX_PAGE_SIZE = 100

#: Statuses after which a conversation never changes: its GET body is final.
FINISHED: frozenset[str] = frozenset({"done", "failed"})
#: Statuses of a call still going on: a monitor socket may attach.
LIVE: frozenset[str] = frozenset({"initiated", "in-progress"})


def list_url(base_url: str) -> str:
    """Return the list endpoint, ``{base}/v1/convai/conversations``."""
    return f"{http_base_url(base_url)}{LIST_PATH}"


def conversation_url(base_url: str, conversation_id: str) -> str:
    """Return the get endpoint of one conversation."""
    return f"{http_base_url(base_url)}{LIST_PATH}/{quote(conversation_id, safe='')}"


def monitor_url(base_url: str, conversation_id: str) -> str:
    """Return the monitor socket of one conversation (ws/wss form of the base URL)."""
    return f"{ws_base_url(base_url)}{LIST_PATH}/{quote(conversation_id, safe='')}/monitor"


def list_params(
    agent_id: str | None,
    *,
    cursor: str | None = None,
    page_size: int = MAX_PAGE_SIZE,
    after_unix: int | None = None,
    before_unix: int | None = None,
) -> dict[str, str]:
    """Build the list query; ``page_size`` is clamped to 1..100 (the API's maximum)."""
    params = {"page_size": str(max(1, min(page_size, MAX_PAGE_SIZE)))}
    if agent_id:
        params["agent_id"] = agent_id
    if cursor:
        params["cursor"] = cursor
    if after_unix is not None:
        params["call_start_after_unix"] = str(after_unix)
    if before_unix is not None:
        params["call_start_before_unix"] = str(before_unix)
    return params


@dataclass(frozen=True, slots=True)
class Summary:
    """What a list page says of one conversation.

    Attributes:
        conversation_id: Its id.
        status: Its status when listed (``None`` if the page did not say);
            a hint only, the GET body's status is the one that counts.
        start_unix: When the call started, if given.

    """

    conversation_id: str
    status: str | None
    start_unix: int | None


@dataclass(frozen=True, slots=True)
class Page:
    """One list page: its conversations and where the next page starts."""

    summaries: list[Summary]
    next_cursor: str | None
    has_more: bool

    @property
    def last(self) -> bool:
        """Whether no page follows."""
        return not self.has_more or not self.next_cursor


def parse_page(body: bytes) -> Page:
    """Parse a list response body; summaries without a string id are skipped.

    Raises:
        ValueError: the body is not a JSON object with a ``conversations`` list.

    """
    data: Any = orjson.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("conversations"), list):
        raise ValueError("the list response has no 'conversations' list")
    summaries = []
    for item in data["conversations"]:
        if not isinstance(item, dict) or not isinstance(item.get("conversation_id"), str):
            continue
        status = item.get("status")
        start = item.get("start_time_unix_secs")
        summaries.append(
            Summary(
                item["conversation_id"],
                status if isinstance(status, str) else None,
                start if isinstance(start, int) and not isinstance(start, bool) else None,
            )
        )
    cursor = data.get("next_cursor")
    return Page(summaries, cursor if isinstance(cursor, str) else None, data.get("has_more") is True)
