"""The checks of ``capture doctor``: what a new deployment gets wrong, each a :class:`~ingest.observe.health.Check`.

* :func:`platform_checks`: the API key is accepted and the agent exists (a
  signed-URL call, as ``capture ingest`` makes one per connection), and this
  machine's clock agrees with the platform's ``Date`` header within the
  webhook receiver's window;
* :func:`webhook_secret_check`: a webhook receiver has its secret;
* :func:`data_dir_checks`: the data dir (or where it will be created) takes a
  write, an fsync and a read back, on a filesystem that keeps data (tmpfs
  and a container's overlay layer are named as warnings);
* :func:`lock_check`: the data dir's lock is free, or held by a process
  that runs.

The projection's checks are in :mod:`projections.health`. None of these
writes anything but a probe file it removes; none prints a secret.

"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import aiohttp

from ingest.log.lock import LockHolder, fsync_dir, probe_lock
from ingest.observe.health import Check
from ingest.sources.urls import signed_url_endpoint
from ingest.sources.webhook.signature import CLOCK_SKEW_WARNING, MAX_AGE


__all__ = [
    "filesystem_type",
    "data_dir_checks",
    "lock_check",
    "platform_checks",
    "webhook_secret_check",
]

# Filesystems whose data does not outlive the machine or the container, and
# those whose locks and fsync depend on a server: named, not refused.
_VOLATILE = {
    "tmpfs": "memory (tmpfs): the log is lost at reboot",
    "ramfs": "memory (ramfs): the log is lost at reboot",
}
_LAYERED = {"overlay": "a container's writable layer (overlay): mount a volume at the data dir"}
_NETWORK_PREFIXES = ("nfs", "cifs", "smb", "fuse", "9p", "ceph", "glusterfs")


@dataclass(frozen=True)
class _Answer:
    status: int | None
    date: str | None
    local_time: float
    failure: str | None = None


async def _signed_url_call(base_url: str, agent_id: str, api_key: str, timeout: float) -> _Answer:
    try:
        endpoint = signed_url_endpoint(base_url, agent_id)
    except ValueError as exc:
        return _Answer(None, None, time.time(), f"--base-url is not usable: {exc}")
    headers = {"xi-api-key": api_key} if api_key else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(endpoint, headers=headers) as response,
        ):
            sent = time.time()
            await response.read()
            return _Answer(response.status, response.headers.get("Date"), sent)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        return _Answer(None, None, time.time(), f"cannot reach {base_url}: {why}")


def _key_check(answer: _Answer, agent_id: str, api_key: str) -> Check:
    name = "api key"
    if answer.failure is not None:
        return Check(name, False, answer.failure)
    status = answer.status
    if status == 200:
        if not api_key:
            return Check(name, True, f"no ELEVENLABS_API_KEY: agent {agent_id} must be public", warning=True)
        return Check(name, True, f"accepted; agent {agent_id} exists")
    if status == 401:
        if not api_key:
            return Check(name, False, f"agent {agent_id} needs a key: set ELEVENLABS_API_KEY")
        return Check(name, False, "refused (HTTP 401): check ELEVENLABS_API_KEY")
    if status == 403:
        return Check(name, False, f"refused for agent {agent_id} (HTTP 403): the key lacks access to it")
    if status == 404:
        return Check(name, False, f"agent {agent_id} not found (HTTP 404): check --agent-id and --base-url")
    return Check(name, False, f"the signed-URL call answered HTTP {status}: check --base-url")


def _clock_check(answer: _Answer, clock: Callable[[], float]) -> Check:
    name = "clock"
    if answer.failure is not None:
        return Check(name, False, "not checked: the platform did not answer")
    if answer.date is None:
        return Check(name, True, "not checked: the platform's answer has no Date header", warning=True)
    try:
        theirs = parsedate_to_datetime(answer.date).timestamp()
    except (TypeError, ValueError):
        return Check(
            name, True, f"not checked: the platform's Date header {answer.date!r} is not a date", warning=True
        )
    # This clock's reading when the answer came, against the middle of the
    # second Date names (it has whole seconds): a skew under 1.5 s is none.
    skew = clock() - (time.time() - answer.local_time) - (theirs + 0.5)
    words = f"{abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the platform's"
    if abs(skew) <= 1.5:
        return Check(name, True, "agrees with the platform's")
    if abs(skew) <= CLOCK_SKEW_WARNING:
        return Check(name, True, f"{words} (within {CLOCK_SKEW_WARNING // 60} min)")
    if abs(skew) <= MAX_AGE:
        return Check(
            name, True, f"{words}: every webhook delivery logs a warning; fix the clock (NTP)", warning=True
        )
    consequence = (
        f"webhook deliveries look older than {MAX_AGE // 60} min and are refused"
        if skew > 0
        else "webhook timestamps and REST times are hours off"
    )
    return Check(name, False, f"{words}: {consequence}; fix the clock (NTP)")


async def platform_checks(
    base_url: str,
    agent_id: str | None,
    api_key: str,
    *,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.time,
) -> list[Check]:
    """Check the key and the agent with a signed-URL call, and this clock against the answer's ``Date``.

    Args:
        base_url: The API host.
        agent_id: The agent; without one, nothing is asked.
        api_key: Sent as ``xi-api-key`` (``""``: none, a public agent).
        timeout: Seconds for the call.
        clock: This machine's clock (a test gives another).

    """
    if not agent_id:
        message = "no agent id: pass --agent-id or set AGENT_ID"
        return [
            Check("api key", False, message),
            Check("clock", False, "not checked: no agent id to ask about"),
        ]
    answer = await _signed_url_call(base_url, agent_id, api_key, timeout)
    return [_key_check(answer, agent_id, api_key), _clock_check(answer, clock)]


def webhook_secret_check(webhook_configured: bool, secret: str) -> Check:
    """A webhook receiver needs ``ELEVENLABS_WEBHOOK_SECRET``; without one configured, nothing is needed."""
    name = "webhook secret"
    if not webhook_configured:
        detail = "set" if secret.strip() else "not needed: no webhook port configured"
        return Check(name, True, detail)
    if not secret.strip():
        return Check(name, False, "a webhook port is configured but ELEVENLABS_WEBHOOK_SECRET is not set")
    return Check(name, True, "set")


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (Linux: from ``/proc/self/mountinfo``), or ``None``."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    resolved = str(path.resolve())
    best, kind = "", None
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, fields[fields.index("-") + 1]
    return kind


def _probe(folder: Path) -> float:
    """Write, fsync, read back and remove a probe file in ``folder``; return the fsync's seconds."""
    probe = folder / f".capture-doctor-{os.getpid()}-{secrets.token_hex(4)}"
    data = secrets.token_bytes(4096)
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        os.write(fd, data)
        started = time.perf_counter()
        os.fsync(fd)
        took = time.perf_counter() - started
    finally:
        os.close(fd)
    try:
        fsync_dir(folder)
        if probe.read_bytes() != data:
            raise OSError("the probe file read back differs from what was written")
    finally:
        probe.unlink()
        fsync_dir(folder)
    return took


def data_dir_checks(data_dir: Path) -> list[Check]:
    """Whether the data dir takes a write, an fsync and a read back, and what kind of filesystem holds it."""
    name = "data dir"
    folder = data_dir
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not folder.is_dir():
        return [Check(name, False, f"{folder} is not a directory: check --data-dir")]
    try:
        took = _probe(folder)
    except OSError as exc:
        return [
            Check(name, False, f"cannot write, fsync and read back a file in {folder}: {exc.strerror or exc}")
        ]
    where = (
        f"{data_dir}"
        if folder == data_dir
        else f"{data_dir} does not exist yet (capture creates it in {folder})"
    )
    checks = [Check(name, True, f"{where}: write, fsync ({took * 1000:.1f} ms) and read back work")]
    kind = filesystem_type(folder)
    if kind is not None:
        warning = _VOLATILE.get(kind) or _LAYERED.get(kind)
        if warning is None and kind.startswith(_NETWORK_PREFIXES):
            warning = (
                f"a network or user-space filesystem ({kind}): its locks and fsync may not be a local disk's"
            )
        if warning is not None:
            checks.append(Check("filesystem", True, f"{data_dir} is on {warning}", warning=True))
        else:
            checks.append(Check("filesystem", True, kind))
    return checks


def _alive(pid: int) -> bool:
    if sys.platform == "win32":
        return True  # the OS drops the lock of a dead process: a held lock has a live holder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def lock_check(data_dir: Path, holder: LockHolder | None = None, *, probe: bool = True) -> Check:
    """Whether the data dir's lock is free, or held by a process that runs (this host's, checked by pid)."""
    name = "lock"
    if probe:
        holder = probe_lock(data_dir)
    if holder is None:
        return Check(name, True, "free: no capture writes to this data dir")
    if holder.host not in (None, socket.gethostname()):
        return Check(
            name, True, f"held by {holder} (another host: its process is not checked here)", warning=True
        )
    if holder.pid is None or not _alive(holder.pid):
        return Check(
            name,
            False,
            f"held, but the process it names ({holder}) is not running: another process holds the file open",
        )
    return Check(name, True, f"held by {holder}, running")
