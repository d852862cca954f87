"""The Conversations REST API: ``GET /v1/convai/conversations`` and ``GET /v1/convai/conversations/{id}``.

Served over an :class:`~ingest.simulator.account.Account` (``docs/elevenlabs-protocol.md``
§6b): list (``agent_id``, ``cursor``, ``page_size`` ≤ 100,
``call_start_after_unix``, ``call_start_before_unix``) and get (``format=json``
or ``opentelemetry``, which adds ``otlp_traces``), each answered after
``latency``. Scripted :class:`RestFault` answers come first (429
``too_many_concurrent_requests`` or ``system_busy``, with or without
``Retry-After``; other statuses), then the concurrency limit (above it, 429
``too_many_concurrent_requests``), then the key check. Every request is a
:class:`RestRecord` in :attr:`ConversationsApi.requests`.

"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from ingest.simulator.account import Account, BadQuery
from ingest.simulator.responses import api_key_ok, bytes_response, error_response, validation_error


__all__ = ["CONVERSATIONS_PATH", "ConversationsApi", "RestFault", "RestRecord"]

CONVERSATIONS_PATH = "/v1/convai/conversations"

_FAULT_MESSAGES = {
    "too_many_concurrent_requests": "Too many concurrent requests.",
    "system_busy": "The system is experiencing heavy traffic, please try again later.",
}


@dataclass(frozen=True)
class RestFault:
    """A scripted answer to the next REST request of kind ``on``, instead of serving it.

    Faults are used in order; each answers one request.

    Attributes:
        status: ``detail.status`` of the body: ``too_many_concurrent_requests``
            (wait for a slot) or ``system_busy`` (back off) for a 429, anything
            for another status.
        retry_after: Seconds sent as ``Retry-After`` (an integer when whole);
            ``None`` sends no header.
        http_status: The HTTP status (429 by default; 500, 503, 401, … work).
        on: Which requests it may answer: ``"list"``, ``"get"`` or ``"any"``.

    """

    status: str = "system_busy"
    retry_after: float | None = None
    http_status: int = 429
    on: Literal["any", "list", "get"] = "any"

    def response(self) -> web.Response:
        """The answer this fault gives."""
        message = _FAULT_MESSAGES.get(self.status, f"simulated HTTP {self.http_status}")
        response = error_response(self.http_status, self.status, message)
        if self.retry_after is not None:
            seconds = self.retry_after
            response.headers["Retry-After"] = str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"
        return response


@dataclass
class RestRecord:
    """One REST request the simulator answered. Times are :func:`time.monotonic`.

    Attributes:
        index: 1 for the first REST request, 2 for the next, …
        kind: ``"list"`` or ``"get"`` (``"other"`` is never recorded today).
        path: Path and query as sent.
        conversation_id: For ``get``, the id asked for.
        arrived_at: When the request was parsed.
        in_flight: REST requests being answered when it arrived, itself included.
        answered_at: When its answer was ready.
        status: The HTTP status answered.
        detail_status: ``detail.status`` of an error body (``system_busy``, …).
        retry_after: The ``Retry-After`` header sent, if any.

    """

    index: int
    kind: Literal["list", "get", "other"]
    path: str
    conversation_id: str | None
    arrived_at: float
    in_flight: int = 0
    answered_at: float | None = None
    status: int | None = None
    detail_status: str | None = None
    retry_after: str | None = None


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value else None


class ConversationsApi:
    """The list and get operations, with faults, a concurrency limit and records.

    Args:
        account: The conversations served.
        api_key: With it set, requests need header ``xi-api-key`` equal to it
            (else 401); without, any key or none passes.
        latency: Seconds every served request takes (after the fault, limit
            and key checks), so concurrency shows.
        max_concurrency: Above this many requests in flight, answer 429
            ``too_many_concurrent_requests``; ``None`` for no limit.
        faults: Scripted answers; more can be appended to :attr:`faults`
            later (on the simulator's loop).

    Attributes:
        requests: Every request, in order of arrival.
        in_flight: Requests being answered now.
        max_in_flight: The most in flight at once (a bench may reset it).
        throttled: Requests answered 429.

    """

    def __init__(
        self,
        account: Account | None,
        *,
        api_key: str | None,
        latency: float = 0.0,
        max_concurrency: int | None = None,
        faults: Sequence[RestFault] = (),
    ) -> None:
        self.account = account
        self.api_key = api_key
        self.latency = latency
        self.max_concurrency = max_concurrency
        self.faults: list[RestFault] = list(faults)
        self.requests: list[RestRecord] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.throttled = 0

    async def list_conversations(self, request: web.Request) -> web.Response:
        """``GET /v1/convai/conversations``."""
        return await self._answer(request, None)

    async def get_conversation(self, request: web.Request) -> web.Response:
        """``GET /v1/convai/conversations/{conversation_id}``."""
        return await self._answer(request, request.match_info["conversation_id"])

    def _next_fault(self, kind: str) -> RestFault | None:
        for position, fault in enumerate(self.faults):
            if fault.on in ("any", kind):
                del self.faults[position]
                return fault
        return None

    async def _answer(self, request: web.Request, conversation_id: str | None) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        record = RestRecord(
            index=len(self.requests) + 1,
            kind="list" if conversation_id is None else "get",
            path=request.raw_path,
            conversation_id=conversation_id,
            arrived_at=time.monotonic(),
            in_flight=self.in_flight,
        )
        self.requests.append(record)
        try:
            response = await self._serve(request, record)
        finally:
            self.in_flight -= 1
        record.answered_at = time.monotonic()
        record.status = response.status
        record.retry_after = response.headers.get("Retry-After")
        if response.status == 429:
            self.throttled += 1
        return response

    async def _serve(self, request: web.Request, record: RestRecord) -> web.Response:
        assert self.account is not None
        fault = self._next_fault(record.kind)
        if fault is not None:
            record.detail_status = fault.status
            return fault.response()
        limit = self.max_concurrency
        if limit is not None and self.in_flight > limit:
            record.detail_status = "too_many_concurrent_requests"
            return error_response(
                429,
                "too_many_concurrent_requests",
                f"Too many concurrent requests: your plan allows {limit}.",
            )
        if not api_key_ok(request, self.api_key, required=False):
            record.detail_status = "invalid_api_key"
            return error_response(401, "invalid_api_key", "Invalid API key")
        if self.latency:
            await asyncio.sleep(self.latency)
        query = request.query
        if record.conversation_id is not None:
            body = self.account.get(record.conversation_id, otel=query.get("format") == "opentelemetry")
            if body is None:
                record.detail_status = "conversation_not_found"
                return error_response(404, "conversation_not_found", "Conversation not found")
            return bytes_response(200, body)
        try:
            body = self.account.list_page(
                agent_id=query.get("agent_id") or None,
                cursor=query.get("cursor") or None,
                page_size=int(query.get("page_size") or 30),
                after_unix=_int_or_none(query.get("call_start_after_unix")),
                before_unix=_int_or_none(query.get("call_start_before_unix")),
            )
        except (BadQuery, ValueError) as exc:
            return validation_error(["query"], str(exc), "value_error")
        return bytes_response(200, body)
