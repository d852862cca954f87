"""Where a running capture serves its metrics, so that ``capture status`` can show the same figures.

The metrics endpoint writes ``<data dir>/capture.metrics`` (its pid and URL)
once it listens and removes it when it stops; a reader trusts the file only
when the data dir's lock is held by the pid it names (a killed process leaves
it behind). The figures are then one scrape away (:func:`scrape`).

"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from ingest.log.lock import LockHolder


__all__ = [
    "ADDRESS_NAME",
    "LiveFigures",
    "address_url",
    "forget_address",
    "published_url",
    "publish_address",
    "scrape",
]

ADDRESS_NAME = "capture.metrics"


def address_url(host: str, port: int) -> str:
    """The URL a process on this machine reaches an endpoint bound to ``host``:``port`` at."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def publish_address(data_dir: Path, url: str) -> None:
    """Write the address file (replacing any), atomically."""
    path = data_dir / ADDRESS_NAME
    scratch = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    scratch.write_bytes(orjson.dumps({"pid": os.getpid(), "url": url}) + b"\n")
    os.replace(scratch, path)


def forget_address(data_dir: Path) -> None:
    """Remove the address file if this process wrote it."""
    path = data_dir / ADDRESS_NAME
    try:
        if orjson.loads(path.read_bytes()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, orjson.JSONDecodeError, AttributeError):
        pass


def published_url(data_dir: Path, holder: LockHolder | None) -> str | None:
    """The metrics URL of the process holding the lock, if it published one."""
    if holder is None or holder.pid is None:
        return None
    try:
        info: Any = orjson.loads((data_dir / ADDRESS_NAME).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(info, dict) or info.get("pid") != holder.pid or not isinstance(info.get("url"), str):
        return None
    return str(info["url"])


@dataclass(frozen=True)
class LiveFigures:
    """One scrape of a running capture.

    Attributes:
        url: Where it was scraped.
        ready: Whether ``/readyz`` answered 200.
        checks: ``/readyz``'s lines.
        metrics: Every ``capture_*`` sample but histogram buckets, keyed as
            the exposition writes it (``name{label="value",…}``).
        error: Why it could not be scraped (then the rest is empty).

    """

    url: str
    ready: bool = False
    checks: tuple[str, ...] = ()
    metrics: dict[str, float] | None = None
    error: str | None = None


def _get(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(url: str, timeout: float = 2.0) -> LiveFigures:
    """Read a running capture's ``/metrics`` and ``/readyz``."""
    try:
        _, text = _get(f"{url}/metrics", timeout)
        status, ready = _get(f"{url}/readyz", timeout)
    except (OSError, ValueError) as exc:
        return LiveFigures(url, error=str(getattr(exc, "reason", exc)))
    metrics: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("capture_") or sample.name.endswith("_bucket"):
                continue
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            metrics[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return LiveFigures(url, status == 200, tuple(ready.splitlines()), metrics)
