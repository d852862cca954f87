"""Reading the log in a second process while the caller folds: :func:`scan_ahead`.

A catch-up reads every line but folds only the few the rule reads (user
turns and what explains them). Telling those apart costs about as much as
folding them and writing the rows, so on a machine with two cores a long
catch-up splits the work: a child process reads the segments and classifies
the lines (:func:`~projections.log_scan.classify`); the caller decodes the
lines the rule reads, folds and writes. The child sends the raw bytes of
those lines only, a chunk at a time through its stdout pipe, whose buffer
bounds what both sides hold.

The items, positions and counts are exactly those of
:func:`~projections.log_scan.scan`. The child is a fresh interpreter running
this module (``python -m projections.read_ahead``), not a ``multiprocessing``
child: those re-import the caller's main script, which a library must not
ask of its callers. Starting it costs a fraction of a second:
:func:`worth_reading_ahead` says when that pays.
"""

from __future__ import annotations

import gc
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Generator
from pathlib import Path
from typing import IO, Any

from ingest.errors import CaptureError, LogError

from .log_scan import LineItem, Position, ScanStats, Undecoded, decode_items, read_chunks, scan_size
from .module_process import module_command


__all__ = ["MIN_READ_AHEAD_BYTES", "scan_ahead", "worth_reading_ahead"]

#: Below this many bytes to read, starting the child costs more than it saves.
MIN_READ_AHEAD_BYTES = 32 << 20

# Messages are pickles (between two processes of this program), each after its
# length. Per chunk: ("chunk", items, invalid positions), as Chunk.lines gives
# them. At the end: ("end", partial tail, invalid positions); on failure:
# ("error", message).
_LENGTH = struct.Struct("<Q")
_QUEUED = 8  # messages received ahead of the caller (about 1 MiB of log each)


def worth_reading_ahead(events_dir: Path, after_seq: int = 0) -> bool:
    """Whether :func:`scan_ahead` beats :func:`~projections.log_scan.scan` here: two cores, much to read."""
    return (os.cpu_count() or 1) >= 2 and scan_size(events_dir, after_seq) >= MIN_READ_AHEAD_BYTES


def scan_ahead(
    events_dir: Path, after_seq: int = 0, stats: ScanStats | None = None
) -> Generator[LineItem, None, None]:
    """Yield what :func:`~projections.log_scan.scan` yields, reading and classifying in a child process.

    Close the generator (or run it to the end) to stop the child; it also
    stops by itself when this process dies.

    Raises:
        LogError: a segment cannot be read, or the child could not run.

    """
    stats = stats if stats is not None else ScanStats()
    argv, env = module_command(__name__, str(events_dir), str(after_seq))
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
    except OSError as exc:
        raise LogError(f"cannot start a process to read {events_dir}: {exc}") from exc
    assert child.stdout is not None and child.stderr is not None
    # A thread takes the child's messages off the pipe as they come, so the
    # child runs ahead by up to _QUEUED chunks instead of waiting for the
    # caller to be done with each (a chunk's message outgrows a pipe's buffer).
    messages: queue.Queue[Any] = queue.Queue(maxsize=_QUEUED)
    stopping = threading.Event()
    pump = threading.Thread(
        target=_pump, args=(child.stdout, messages, stopping), name="capture-read-ahead", daemon=True
    )
    pump.start()
    try:
        while True:
            message = messages.get()
            if message is None:
                child.wait()
                said = child.stderr.read().decode(errors="replace").strip().splitlines()
                raise LogError(
                    f"the process reading {events_dir} stopped (exit code {child.returncode})"
                    + (f": {said[-1]}" if said else "")
                )
            kind = message[0]
            if kind == "error":
                raise LogError(message[1])
            if kind == "end":
                stats.partial_tail = message[1]
                stats.invalid.extend(message[2])
                return
            items: list[range | Undecoded[Position]]
            _, items, invalid = message
            stats.invalid.extend(invalid)
            yield from decode_items(items, stats.invalid)
    finally:
        stopping.set()
        if child.poll() is None:
            child.kill()  # stopped early: the pump then sees the end of the pipe
        pump.join()
        child.wait()
        child.stdout.close()
        child.stderr.close()


def _pump(stream: IO[bytes], messages: queue.Queue[Any], stopping: threading.Event) -> None:
    """Move messages from ``stream`` to ``messages`` until the end (then ``None``) or ``stopping``."""
    while True:
        try:
            message = _receive(stream)
        except (OSError, ValueError, pickle.UnpicklingError):
            message = None  # a torn message: the child died mid-write
        while True:
            try:
                messages.put(message, timeout=0.05)
                break
            except queue.Full:
                if stopping.is_set():
                    return
        if message is None:
            return


def _receive(stream: IO[bytes]) -> Any:
    """The next message, or ``None`` at the end of the stream."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack(head)
    payload = stream.read(length)
    if len(payload) < length:
        return None
    return pickle.loads(payload)


def _send(stream: IO[bytes], message: tuple[Any, ...]) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def read_ahead(events_dir: Path, after_seq: int, out: IO[bytes]) -> None:
    """The child's work: classify every chunk and send what the parent needs of it to ``out``."""
    stats = ScanStats()
    sent_invalid = 0
    for chunk in read_chunks(events_dir, after_seq, stats):
        items, invalid = chunk.lines(after_seq)
        # read_chunks adds a closed segment's torn end to stats as it passes it.
        _send(out, ("chunk", items, stats.invalid[sent_invalid:] + invalid))
        sent_invalid = len(stats.invalid)
    _send(out, ("end", stats.partial_tail, stats.invalid[sent_invalid:]))


def _main(argv: list[str]) -> int:
    gc.disable()  # the child makes no reference cycles; the collector's passes would be pure cost
    out = sys.stdout.buffer
    try:
        read_ahead(Path(argv[0]), int(argv[1]), out)
    except CaptureError as exc:
        _send_quietly(out, ("error", str(exc)))
    except (BrokenPipeError, KeyboardInterrupt):
        pass  # the parent stopped reading, or Ctrl+C reached the whole group
    except Exception as exc:  # noqa: BLE001 - the parent turns this into one line for the user
        _send_quietly(out, ("error", f"reading {argv[0]} failed: {type(exc).__name__}: {exc}"))
    # What is left in the buffer has nowhere to go if the parent is gone; as
    # Python's docs on SIGPIPE advise, point stdout at devnull for the exit.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _send_quietly(out: IO[bytes], message: tuple[Any, ...]) -> None:
    try:
        _send(out, message)
    except BrokenPipeError:
        pass


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
