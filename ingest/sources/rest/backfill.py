"""``capture backfill`` as a library call: the Conversations REST API into the log.

Lists the agent's conversations (``GET /v1/convai/conversations``, newest first,
cursor pagination) and fetches each finished one
(``GET /v1/convai/conversations/{id}``). Each fetched ``done`` or ``failed``
conversation is one log line: source ``rest``, direction ``in``, the body's
``agent_id`` and ``conversation_id``, no connection id, and the response body
exactly as received (spliced under ``event`` when it is one JSON object on one
line, else kept as ``raw``). List pages and unfinished conversations are not
logged.

The log is the only state. At start the log is scanned once
(:func:`~ingest.sources.rest.captured.scan_captured`) for conversations already captured
with their transcript — by an earlier backfill, or by a ``post_call_transcription``
webhook that holds one — and those are not fetched again unless ``refresh``.
A conversation is fetched at most once per run, even when its body had no
transcript (it is logged as received, and asked again by the next run). An interrupted backfill
therefore continues where it stopped: listing again costs one request per 100
conversations, while the fetches already done are skipped. No second file can
disagree with the log, and nothing is lost between an append and a checkpoint.

Unfinished conversations (``initiated``, ``in-progress``, ``processing``) and
failed fetches are kept in memory and asked again: in a one-shot run for up to
``wait_pending`` seconds, with growing pauses; with ``follow``, on every poll.
Whatever is still unfinished when a run ends is picked up by the next run.

Every request goes through one :class:`~ingest.sources.rest.client.RestClient`, which
bounds them (``concurrency``, list and get alike) and handles 429s as the API
documents them. Appends run on the event loop's thread, as
:class:`~ingest.log.writer.LogWriter` requires, so one writer can be shared with the
other sources of ``capture ingest``.

"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ingest.errors import ConfigError
from ingest.log.envelope import Origin
from ingest.log.frames import Frame, inspect_frame
from ingest.log.writer import LogWriter, events_dir
from ingest.sources.rest.api import FINISHED, Page, conversation_url, list_params, list_url, parse_page
from ingest.sources.rest.captured import Captured, holds_transcript, scan_captured
from ingest.sources.rest.client import RestClient, RestResult, RestStats, open_session
from ingest.sources.rest.policy import RetryPolicy


__all__ = ["SOURCE", "BackfillConfig", "BackfillReport", "Progress", "run_backfill"]

log = logging.getLogger("capture.backfill")

SOURCE = "rest"

# Pauses between retries of unfinished conversations in a one-shot run grow to this.
_MAX_PENDING_DELAY = 30.0
_UNFINISHED = "unfinished"
_ERROR = "error"


@dataclass(frozen=True)
class BackfillConfig:
    """What to back fill and how.

    Attributes:
        agent_id: The agent whose conversations are listed.
        base_url: The API host (``https://api.elevenlabs.io`` or a residency host).
        api_key: Sent as ``xi-api-key``; never logged or printed.
        since: Only calls that started at or after this Unix time
            (``call_start_after_unix``).
        until: Only calls that started before this Unix time (``call_start_before_unix``).
        page_size: Conversations per list page (1..100).
        concurrency: Requests in flight at most, list and get together.
        refresh: Fetch conversations the log already holds again (each once per run).
        follow: Keep polling every ``interval`` seconds until stopped.
        interval: Seconds between polls with ``follow``.
        follow_lookback: With ``follow``, each poll after the first lists calls
            that started up to this many seconds before the previous poll began.
        wait_pending: One-shot run: how long to keep asking for unfinished
            conversations (and failed fetches) after the listing; 0 not at all.
        pending_delay: The first pause between those retries (it doubles, up to 30 s).
        retry: Retry timing of single requests (429s, 5xx, network errors).
        request_timeout: Seconds to connect, and between bytes of an answer.

    Raises:
        ConfigError: a value is out of range.

    """

    agent_id: str
    base_url: str
    api_key: str = field(repr=False)
    since: int | None = None
    until: int | None = None
    page_size: int = 100
    concurrency: int = 2
    refresh: bool = False
    follow: bool = False
    interval: float = 60.0
    follow_lookback: float = 3600.0
    wait_pending: float = 30.0
    pending_delay: float = 2.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    request_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.agent_id:
            raise ConfigError("no agent id: pass --agent-id or set AGENT_ID")
        if not self.api_key:
            raise ConfigError("no API key: set ELEVENLABS_API_KEY (the Conversations API needs one)")
        if not 1 <= self.page_size <= 100:
            raise ConfigError("--page-size must be between 1 and 100")
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.interval <= 0 or self.wait_pending < 0 or self.pending_delay <= 0:
            raise ConfigError("--interval and --wait-pending must be positive")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ConfigError("--since must be before --until")


@dataclass
class BackfillReport:
    """What a backfill did; passed to the progress callback as it changes.

    Attributes:
        passes: Listings walked (one, or one per poll with ``follow``).
        pages: List pages read.
        listed: Conversations listed (each counted once per pass).
        already_captured: Listed conversations the log already held.
        queued: Conversation GETs scheduled.
        answered: Conversation GETs that ended (any outcome).
        logged: Conversations appended to the log.
        done: ``done`` conversations among them.
        failed: ``failed`` conversations among them.
        unfinished: Conversations still not finished (right now, or at the end).
        errors: Conversations whose fetch failed and is still to be retried.
        missing: Conversations that answered 404 (deleted since listed).
        list_incomplete: The last listing stopped early (errors); run again.
        requests: Requests sent by the REST client.
        throttled: 429 answers received.
        stopped: The run was stopped before it finished.
        passed_at: :func:`time.monotonic` when a listing was last walked
            to its end, if ever.
        rest: The REST client's counters, live (``requests`` and
            ``throttled`` above are copied from them now and then).

    """

    passes: int = 0
    pages: int = 0
    listed: int = 0
    already_captured: int = 0
    queued: int = 0
    answered: int = 0
    logged: int = 0
    done: int = 0
    failed: int = 0
    unfinished: int = 0
    errors: int = 0
    missing: int = 0
    list_incomplete: bool = False
    requests: int = 0
    throttled: int = 0
    stopped: bool = False
    passed_at: float | None = None
    rest: RestStats | None = None


Progress = Callable[[BackfillReport], None]


async def run_backfill(
    writer: LogWriter,
    config: BackfillConfig,
    stop: asyncio.Event,
    progress: Progress | None = None,
    *,
    rest: RestClient | None = None,
    report: BackfillReport | None = None,
) -> BackfillReport:
    """Back fill the log from the Conversations API until done (or, with ``follow``, stopped).

    Args:
        writer: The open log; appended to on the calling loop's thread only.
        config: What to fetch.
        stop: Set it to stop: requests in flight are abandoned (nothing of
            theirs was logged), the log is fsynced, and the report returned.
        progress: Called with the report whenever it changes (on the loop).
        rest: A client to share with other sources (its concurrency bound then
            covers them all); one is made from ``config`` if omitted.
        report: Counters to update (a fresh :class:`BackfillReport` if
            omitted), for a caller that reads them while it runs.

    Raises:
        AuthError: the API refused the key (401) or its permissions (403).
        ConfigError: the API refused the query (a bad agent id, base URL or time range).
        LogWriteError: the log could not be written; nothing is retried.

    """
    report = report if report is not None else BackfillReport()
    if rest is not None:
        return await _Backfill(writer, config, rest, progress, report).run(stop)
    async with open_session(config.request_timeout) as session:
        client = RestClient(
            session, config.api_key, concurrency=config.concurrency, policy=config.retry, stop=stop
        )
        return await _Backfill(writer, config, client, progress, report).run(stop)


class _Backfill:
    def __init__(
        self,
        writer: LogWriter,
        config: BackfillConfig,
        rest: RestClient,
        progress: Progress | None,
        report: BackfillReport,
    ) -> None:
        self.writer = writer
        self.config = config
        self.rest = rest
        self.progress = progress
        self.report = report
        report.rest = rest.stats
        self.captured = Captured()
        self.fetched: set[str] = set()  # logged by this run: never fetched twice
        self.pending: dict[str, str] = {}  # id -> _UNFINISHED | _ERROR

    async def run(self, stop: asyncio.Event) -> BackfillReport:
        work = asyncio.ensure_future(self._run(stop))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                work.cancel()
                try:
                    await work
                except asyncio.CancelledError:
                    pass
            else:
                work.result()
        finally:
            stopping.cancel()
            work.cancel()
            self.report.stopped = stop.is_set()
            self._tally()
            await asyncio.to_thread(self.writer.sync)
        return self.report

    async def _run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        folder = events_dir(self.writer.data_dir)
        self.captured = await asyncio.to_thread(scan_captured, folder)
        log.debug("the log holds %d captured conversations", len(self.captured.conversation_ids))
        after = cfg.since
        while True:
            started = time.time()
            await self._pass(after, cfg.until)
            if not cfg.follow:
                await self._retry_pending(stop)
                return
            await asyncio.to_thread(self.writer.sync)
            try:
                await asyncio.wait_for(stop.wait(), cfg.interval)
                return
            except TimeoutError:
                pass
            # Webhooks (or another source of this process) may have captured some meanwhile.
            self.captured = await asyncio.to_thread(scan_captured, folder, self.captured)
            if not self.report.list_incomplete:
                # Only what started lately can be new; a listing cut short is walked again whole.
                window = int(started - cfg.follow_lookback)
                after = window if cfg.since is None else max(cfg.since, window)

    # -- one pass: list, fetch the finished, ask again for the unfinished -----------------

    async def _pass(self, after: int | None, before: int | None) -> None:
        report = self.report
        report.passes += 1
        report.list_incomplete = False
        seen: set[str] = set()
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=4 * self.config.concurrency + 100)

        async def produce() -> None:
            await self._list(queue, seen, after, before)
            for conversation_id in [c for c in self.pending if c not in seen]:
                await self._enqueue(queue, conversation_id)
            for _ in range(self.config.concurrency):
                await queue.put(None)

        workers = [self._worker(queue) for _ in range(self.config.concurrency)]
        await _all_or_nothing([produce(), *workers])
        self._tally()
        if not report.list_incomplete:
            report.passed_at = time.monotonic()
        log.info(
            "backfill pass %d: %d listed, %d logged so far, %d already in the log, %d unfinished, %d errors",
            report.passes,
            report.listed,
            report.logged,
            report.already_captured,
            report.unfinished,
            report.errors,
        )

    async def _list(
        self, queue: asyncio.Queue[str | None], seen: set[str], after: int | None, before: int | None
    ) -> None:
        cfg = self.config
        url = list_url(cfg.base_url)
        cursor: str | None = None
        while True:
            params = list_params(
                cfg.agent_id, cursor=cursor, page_size=cfg.page_size, after_unix=after, before_unix=before
            )
            result = await self.rest.get(url, params, what="the conversation list")
            page = self._page(result)
            if page is None:
                self.report.list_incomplete = True
                return
            self.report.pages += 1
            for summary in page.summaries:
                conversation_id = summary.conversation_id
                if conversation_id in seen:
                    continue
                seen.add(conversation_id)
                self.report.listed += 1
                if self._captured(conversation_id):
                    self.report.already_captured += 1
                    self.pending.pop(conversation_id, None)
                elif summary.status is not None and summary.status not in FINISHED:
                    self.pending[conversation_id] = _UNFINISHED
                else:
                    await self._enqueue(queue, conversation_id)
            self._changed()
            if page.last:
                return
            cursor = page.next_cursor

    def _page(self, result: RestResult) -> Page | None:
        """Return the parsed page, or None (logged) when the listing cannot go on."""
        if result.failure is not None:
            if result.failure != "stopped":
                log.warning("%s; the listing will be retried on the next run", result.failure)
            return None
        if result.status in (400, 404, 422):
            detail = result.body[:300].decode("utf-8", "replace")
            raise ConfigError(
                f"the conversation list was refused with HTTP {result.status} ({detail}): "
                "check --agent-id, --base-url, --since and --until"
            )
        if not result.ok:
            log.warning("the conversation list answered HTTP %s; stopping this listing", result.status)
            return None
        try:
            return parse_page(result.body)
        except ValueError as exc:
            log.warning("the conversation list answered an unexpected body (%s); stopping this listing", exc)
            return None

    async def _enqueue(self, queue: asyncio.Queue[str | None], conversation_id: str) -> None:
        self.report.queued += 1
        await queue.put(conversation_id)

    async def _worker(self, queue: asyncio.Queue[str | None]) -> None:
        while True:
            conversation_id = await queue.get()
            if conversation_id is None:
                return
            await self._fetch(conversation_id)
            self.report.answered += 1
            self._changed()

    async def _fetch(self, conversation_id: str) -> None:
        cfg = self.config
        result = await self.rest.get(
            conversation_url(cfg.base_url, conversation_id), what=f"conversation {conversation_id}"
        )
        if result.failure is not None:
            if result.failure != "stopped":
                log.warning("%s; will retry", result.failure)
                self.pending[conversation_id] = _ERROR
            return
        if result.status == 404:
            self.report.missing += 1
            self.pending.pop(conversation_id, None)
            return
        if not result.ok:
            log.warning("conversation %s answered HTTP %s; will retry", conversation_id, result.status)
            self.pending[conversation_id] = _ERROR
            return
        frame = _frame(result.body)
        message = frame.message
        if message is None:
            log.warning(
                "conversation %s answered a body that is not a JSON object; will retry", conversation_id
            )
            self.pending[conversation_id] = _ERROR
            return
        status = message.get("status")
        if status not in FINISHED:
            self.pending[conversation_id] = _UNFINISHED
            return
        if self._captured(conversation_id):
            return
        body_id = message.get("conversation_id")
        body_agent = message.get("agent_id")
        origin = Origin(
            SOURCE,
            "in",
            body_agent if isinstance(body_agent, str) else cfg.agent_id,
            None,
            body_id if isinstance(body_id, str) else conversation_id,
        )
        self.writer.append(origin, frame, result.received_at)
        complete = holds_transcript(message)
        if not complete:
            log.warning(
                "conversation %s is %s but its body has no transcript: logged as received, "
                "and asked again by the next run",
                conversation_id,
                status,
            )
        for logged_id in {conversation_id, origin.conversation_id}:
            assert logged_id is not None
            self.fetched.add(logged_id)
            if complete:
                self.captured.conversation_ids.add(logged_id)
        self.pending.pop(conversation_id, None)
        self.report.logged += 1
        if status == "done":
            self.report.done += 1
        else:
            self.report.failed += 1

    def _captured(self, conversation_id: str) -> bool:
        if conversation_id in self.fetched:
            return True
        return not self.config.refresh and conversation_id in self.captured.conversation_ids

    # -- one-shot: ask again for what was not finished ---------------------------------

    async def _retry_pending(self, stop: asyncio.Event) -> None:
        cfg = self.config
        deadline = time.monotonic() + cfg.wait_pending
        delay = cfg.pending_delay
        while self.pending and not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._tally()
            log.info(
                "%d conversations not finished yet (or failed to fetch); asking again in %.1f s",
                len(self.pending),
                min(delay, remaining),
            )
            try:
                await asyncio.wait_for(stop.wait(), min(delay, remaining))
                return
            except TimeoutError:
                pass
            await self._fetch_all(list(self.pending))
            delay = min(delay * 2, _MAX_PENDING_DELAY)

    async def _fetch_all(self, conversation_ids: list[str]) -> None:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        for conversation_id in conversation_ids:
            self.report.queued += 1
            queue.put_nowait(conversation_id)
        for _ in range(self.config.concurrency):
            queue.put_nowait(None)
        await _all_or_nothing([self._worker(queue) for _ in range(self.config.concurrency)])

    # -- reporting ---------------------------------------------------------------------

    def _tally(self) -> None:
        report = self.report
        report.unfinished = sum(1 for kind in self.pending.values() if kind == _UNFINISHED)
        report.errors = len(self.pending) - report.unfinished
        report.requests = self.rest.stats.requests
        report.throttled = self.rest.stats.throttled

    def _changed(self) -> None:
        if self.progress is not None:
            self._tally()
            self.progress(self.report)


def _frame(body: bytes) -> Frame:
    """The response body as a frame: its UTF-8 text, or its bytes when it is not UTF-8."""
    try:
        return inspect_frame(body.decode("utf-8"))
    except UnicodeDecodeError:
        return inspect_frame(body)


async def _all_or_nothing(coroutines: list[Coroutine[Any, Any, None]]) -> None:
    """Run coroutines together; the first error (or a cancellation) cancels the others."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
