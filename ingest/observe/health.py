"""What ``/healthz`` and ``/readyz`` answer: checks over a run's counters, data in, verdicts out.

* health (``/healthz``): the process runs and its log can be written — the
  writer is open and has not failed, and its filesystem is neither read-only
  nor full. A failing health check means restart or repair.
* readiness (``/readyz``): every configured source does its job — the agent
  socket is connected, or has been down no longer than a reconnect takes;
  the webhook receiver and the relay listen; the backfill and the monitor
  finished a listing within a few of their intervals — and the live
  projection's oldest waiting line has waited less than
  :attr:`ReadinessPolicy.max_projection_lag`. A failing readiness check
  means "look", not "restart".

Pure: the caller reads the clock and the files and passes what it found.

"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ingest.observe.figures import ProjectionLag
from ingest.observe.watch import Watched


__all__ = ["Check", "DiskState", "ReadinessPolicy", "answer", "health_checks", "readiness_checks"]


@dataclass(frozen=True)
class Check:
    """One verdict: ``name`` (what was checked), ``ok``, ``detail`` in words; ``warning``: passed, but look."""

    name: str
    ok: bool
    detail: str
    warning: bool = False

    @property
    def mark(self) -> str:
        """``ok``, ``warn`` or ``FAIL``: how a line of ``capture doctor`` begins."""
        return "FAIL" if not self.ok else "warn" if self.warning else "ok"


@dataclass(frozen=True)
class DiskState:
    """The data dir's filesystem: whether it is mounted read-only, and the bytes left to us."""

    read_only: bool
    free_bytes: int


@dataclass(frozen=True)
class ReadinessPolicy:
    """How long a source may look idle before the run is not ready.

    Attributes:
        agent_down: Seconds the agent socket may be closed (between
            conversations, backing off after a failure) and still be ready.
        intervals: How many of its intervals the backfill or the monitor may
            go without finishing a listing (plus ``slack``).
        slack: Seconds added to every interval-based bound (a slow listing).
        max_projection_lag: Seconds the oldest line not yet projected may wait.
        min_free_bytes: Free space under which the log counts as not writable.

    """

    agent_down: float = 30.0
    intervals: float = 3.0
    slack: float = 30.0
    max_projection_lag: float = 60.0
    min_free_bytes: int = 1 << 20


def health_checks(watched: Watched, disk: DiskState | None, policy: ReadinessPolicy) -> list[Check]:
    """Whether the log can be written: the writer open and not failed, the filesystem writable."""
    writer = watched.writer
    if writer is None or writer.active_segment is None:
        return [Check("log", False, "the log is not open")]
    if writer.error is not None:
        return [Check("log", False, str(writer.error))]
    if disk is None:
        return [Check("log", True, f"writable, seq {writer.next_seq - 1}")]
    if disk.read_only:
        return [Check("log", False, "the data dir's filesystem is mounted read-only")]
    if disk.free_bytes < policy.min_free_bytes:
        return [Check("log", False, f"the data dir's filesystem is full ({disk.free_bytes} bytes free)")]
    return [Check("log", True, f"writable, seq {writer.next_seq - 1}, {disk.free_bytes} bytes free")]


def _listed(name: str, at: float | None, now: float, started: float, bound: float, what: str) -> Check:
    if at is None:
        waited = now - started
        if waited <= bound:
            return Check(name, True, f"first {what} under way ({waited:.0f} s)")
        return Check(name, False, f"no {what} finished in {waited:.0f} s")
    age = now - at
    if age <= bound:
        return Check(name, True, f"last {what} finished {age:.0f} s ago")
    return Check(name, False, f"last {what} finished {age:.0f} s ago, over {bound:.0f} s")


def readiness_checks(
    watched: Watched,
    lag: ProjectionLag | Exception | None,
    now: float,
    policy: ReadinessPolicy,
    *,
    stopping: bool = False,
) -> list[Check]:
    """Whether each configured source, and the live projection, does its job.

    Args:
        watched: The run's counters.
        lag: The live projection's lag; the error that prevented measuring
            it; ``None`` when the projection is off.
        now: :func:`time.monotonic`.
        policy: The bounds.
        stopping: The run is stopping (nothing is ready then).

    """
    checks: list[Check] = []
    if stopping:
        checks.append(Check("run", False, "stopping"))
    agent = watched.agent
    if agent is not None:
        down = now - agent.state_since
        if agent.connected:
            checks.append(Check("agent_ws", True, f"connected for {down:.0f} s"))
        elif down <= policy.agent_down:
            checks.append(Check("agent_ws", True, f"between connections for {down:.0f} s"))
        else:
            checks.append(Check("agent_ws", False, f"not connected for {down:.0f} s"))
    if watched.webhook is not None:
        listening = watched.webhook.listening
        checks.append(Check("webhook", listening, "listening" if listening else "not listening"))
    if watched.relay is not None:
        listening = watched.relay.listening
        detail = f"listening, {watched.relay.open} connections open" if listening else "not listening"
        checks.append(Check("relay", listening, detail))
    backfill = watched.backfill
    if backfill is not None:
        if backfill.follow:
            bound = policy.intervals * backfill.interval + policy.slack
            checks.append(
                _listed("backfill", backfill.report.passed_at, now, watched.started, bound, "listing")
            )
        else:
            checks.append(Check("backfill", True, f"one pass, {backfill.report.logged} logged so far"))
    monitor = watched.monitor
    if monitor is not None:
        bound = policy.intervals * monitor.poll_interval + policy.slack
        checks.append(_listed("monitor", monitor.report.listed_at, now, watched.started, bound, "listing"))
    if isinstance(lag, Exception):
        checks.append(Check("projection", False, f"cannot read the projection: {lag}"))
    elif lag is not None:
        behind = f"{lag.lines} lines behind, the oldest waiting {lag.seconds:.1f} s"
        if lag.seconds <= policy.max_projection_lag:
            checks.append(Check("projection", True, behind if lag.lines else "up to date"))
        else:
            checks.append(Check("projection", False, f"{behind}, over {policy.max_projection_lag:g} s"))
    return checks


def answer(checks: Sequence[Check]) -> tuple[int, str]:
    """The HTTP status (200 when every check passed, else 503) and body: one line per check."""
    ok = all(check.ok for check in checks)
    lines = [f"{'ok' if check.ok else 'fail'} {check.name}: {check.detail}" for check in checks]
    return (200 if ok else 503), "\n".join(lines) + "\n"
