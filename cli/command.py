"""What every ``capture`` command does alike: help a person can read, and endings that are never a traceback.

* ``--help`` names values as people do: a flag shows no value, others show
  ``N``, ``TEXT``, ``FILE``, ``a|b|c`` or what the option declares
  (``NAME=VALUE``, ``SECONDS``, ``URL``).
* Ctrl-C ends any command with one line and exit 130 (commands that run
  until stopped turn it into a clean stop of their own first).
* A closed stdout (``capture sql … | head -1``) is a normal end: exit 0,
  nothing more printed, as Unix tools do.

"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from cli.app import INTERRUPTED
from cli.output import say


__all__ = ["INTERRUPTED", "CaptureCommand", "CaptureGroup", "ctrl_c_sets"]


_NAMES = {"str": "TEXT", "int": "N", "int range": "N", "float": "NUMBER", "float range": "NUMBER"}


class _ArgumentWithoutType(TyperArgument):
    """An argument shown by its name alone (``[QUERY]``), without a ``<str>`` beside it."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


def _humanize(param: Any, ctx: Any) -> None:
    if type(param) is TyperArgument:
        # Same object, a subclass that only changes how help shows it.
        param.__class__ = _ArgumentWithoutType
        return
    if param.metavar is not None or not hasattr(param, "is_flag"):
        return
    if param.is_flag or param.count:
        param.metavar = ""
        return
    label = str(param.display_type(ctx)).strip("<>") if hasattr(param, "display_type") else ""
    if label.startswith("list[") and label.endswith("]"):
        label = label[len("list[") : -1]
    param.metavar = _NAMES.get(label, label.upper() if label.isidentifier() else label) or None


def _closed_stdout(exc: OSError) -> bool:
    if isinstance(exc, BrokenPipeError):
        return True
    # Windows reports a write to a closed pipe as EINVAL; only a stdout that
    # still cannot take its buffer is a closed pipe.
    if sys.platform != "win32" or exc.errno != errno.EINVAL:
        return False
    try:
        sys.stdout.flush()
    except OSError:
        return True
    return False


def _silence_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's last flush has nowhere to fail."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test runner's buffer)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class _Capture:
    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            _humanize(param, ctx)
        return params

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except KeyboardInterrupt:
            say("interrupted")
            raise typer.Exit(INTERRUPTED) from None
        except OSError as exc:
            if not _closed_stdout(exc):
                raise
            _silence_stdout()
            raise typer.Exit(0) from None


class CaptureCommand(_Capture, TyperCommand):
    """A ``capture`` command (see the module's docstring)."""


class CaptureGroup(_Capture, TyperGroup):
    """The ``capture`` group (see the module's docstring)."""


@contextmanager
def ctrl_c_sets(event: threading.Event) -> Iterator[None]:
    """While the block runs, Ctrl-C (and Ctrl-Break on Windows) sets ``event`` instead of raising.

    For work that must stop at a point of its own choosing, not wherever a
    ``KeyboardInterrupt`` lands (a query on another thread, which is then
    interrupted and waited for). Call it from the main thread.
    """

    def handler(signum: int, frame: object) -> None:
        event.set()

    previous: dict[int, Any] = {}
    for name in ("SIGINT", "SIGBREAK"):
        signum = getattr(signal, name, None)
        if signum is not None:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
