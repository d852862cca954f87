"""Reading the log in a second process while the caller folds: :func:`scan_ahead`.

A catch-up reads every line but folds only the few the rule reads (user
turns and what explains them). Telling those apart costs about as much as
folding them and writing the rows, so on a machine with two cores a long
catch-up splits the work: a child process reads the segments and classifies
the lines (:func:`~projections.log_scan.classify`), and decodes those that
hold live user turns into the :class:`~projections.rule.LiveTurn` the
fold takes in their place (:func:`~projections.log_scan.read_turns`: most of
what the rule reads); the caller decodes the few other lines the rule reads,
folds and writes. The child sends those, a chunk at a time through its stdout
pipe, whose buffer bounds what both sides hold.

The table, positions and counts are exactly those
:func:`~projections.log_scan.scan` gives. The child is a fresh interpreter running
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
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO, Any

from ingest.errors import CaptureError, LogError
from projections.log_scan import (
    LineItem,
    Position,
    ScanStats,
    Undecoded,
    decode_items,
    read_chunks,
    read_turns,
    scan_size,
)
from projections.module_process import module_command
from projections.rule import LiveTurn, new_turn


__all__ = ["MIN_READ_AHEAD_BYTES", "scan_ahead", "worth_reading_ahead"]

#: Below this many bytes to read, starting the child costs more than it saves.
MIN_READ_AHEAD_BYTES = 32 << 20

# Messages are pickles (between two processes of this program), each after its
# length. Per chunk: ("chunk", layout, turns, invalid positions): the items
# read_turns gives, each LiveTurn a None in the layout and a tuple in turns.
# At the end: ("end", partial tail, invalid positions); on failure:
# ("error", message).
_LENGTH = struct.Struct("<Q")
_QUEUED = 8  # messages a pump thread takes ahead of the caller (about 1 MiB of log each)
_PIPE_BYTES = 1 << 20  # Linux's default upper limit for a pipe's buffer
# Unread bytes in the pipe that show the parent is behind: a few messages.
_BEHIND_BYTES = 256 << 10


def worth_reading_ahead(events_dir: Path, after_seq: int = 0) -> bool:
    """Whether :func:`scan_ahead` beats :func:`~projections.log_scan.scan` here: two cores, much to read."""
    return (os.cpu_count() or 1) >= 2 and scan_size(events_dir, after_seq) >= MIN_READ_AHEAD_BYTES


def scan_ahead(
    events_dir: Path,
    after_seq: int = 0,
    stats: ScanStats | None = None,
    *,
    thread: bool | None = None,
    decode_turns: bool | None = None,
) -> Generator[LineItem, None, None]:
    """Yield what :func:`~projections.log_scan.scan` yields, reading and classifying in a child process.

    Lines holding live user turns may come as their
    :class:`~projections.rule.LiveTurn`, decoded by the child.
    Close the generator (or run it to the end) to stop the child; it also
    stops by itself when this process dies.

    Args:
        events_dir: The log's folder.
        after_seq: Lines with a seq at or below it are left out.
        stats: Filled with what the scan saw besides lines.
        thread: Take the child's messages off the pipe in a thread, so that
            it runs ahead; by default only where the pipe's buffer cannot be
            made large enough for that (not Linux).
        decode_turns: Whether the child decodes the turns; by default, it
            does while this process is the slower one.

    Raises:
        LogError: a segment cannot be read, or the child could not run.

    """
    stats = stats if stats is not None else ScanStats()
    policy = "auto" if decode_turns is None else "always" if decode_turns else "never"
    argv, env = module_command(__name__, str(events_dir), str(after_seq), policy)
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
    if thread is None:
        thread = not _widen(child.stdout)
    messages = _pumped(child.stdout) if thread else _received(child.stdout)
    try:
        for message in messages:
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
            _, layout, turns, invalid = message
            stats.invalid.extend(invalid)
            yield from decode_items(_placed(layout, turns), stats.invalid)
    finally:
        if child.poll() is None:
            child.kill()  # stopped early: a pump thread then sees the end of the pipe
        messages.close()
        child.wait()
        child.stdout.close()
        child.stderr.close()


def _received(stream: IO[bytes]) -> Generator[Any, None, None]:
    """The messages on ``stream``, then ``None`` at its end (or a torn message: the child died mid-write)."""
    while True:
        message = _receive(stream)
        yield message
        if message is None:
            return


def _pumped(stream: IO[bytes]) -> Generator[Any, None, None]:
    """:func:`_received`, taken off the pipe by a thread as they come, up to _QUEUED ahead.

    With a pipe's default buffer, smaller than a chunk's message, the child
    would otherwise wait for the caller to be done with each chunk.
    """
    messages: queue.Queue[Any] = queue.Queue(maxsize=_QUEUED)
    stopping = threading.Event()
    pump = threading.Thread(
        target=_pump, args=(stream, messages, stopping), name="capture-read-ahead", daemon=True
    )
    pump.start()
    try:
        while True:
            message = messages.get()
            yield message
            if message is None:
                return
    finally:
        stopping.set()
        pump.join()  # it stops at the end of the pipe, or once told to when the queue is full


def _placed(
    layout: list[range | Undecoded[Position] | None], turns: list[tuple[Any, ...]]
) -> Iterator[range | LiveTurn | Undecoded[Position]]:
    """A chunk's items as :func:`~projections.log_scan.read_turns` gave them: each ``None`` is the next turn."""
    next_turn = map(new_turn, turns).__next__
    for item in layout:
        yield next_turn() if item is None else item


if sys.platform == "linux":
    import array
    import fcntl
    import termios

    def _widen(pipe: IO[bytes]) -> bool:
        """Give ``pipe`` a buffer of several messages, so the child runs ahead; whether it took.

        Better than a thread taking messages off a small pipe: that thread
        needs the GIL for each, so the caller's work held it up, and the
        hand-overs cost the caller about a millisecond per message.
        """
        try:
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            return False  # a lower system limit (/proc/sys/fs/pipe-max-size)
        return True

    def _unread_bytes(pipe: IO[bytes]) -> int | None:
        """How many bytes written to ``pipe`` are not read yet (``None`` if it is not a pipe)."""
        unread = array.array("i", [0])
        try:
            fcntl.ioctl(pipe.fileno(), termios.FIONREAD, unread, True)
        except OSError:
            return None
        return unread[0]

else:

    def _widen(pipe: IO[bytes]) -> bool:
        """Only Linux lets a pipe's buffer be set."""
        return False

    def _unread_bytes(pipe: IO[bytes]) -> int | None:
        """Unknown here: the child then decodes every turn."""
        return None


def _pump(stream: IO[bytes], messages: queue.Queue[Any], stopping: threading.Event) -> None:
    """Move messages from ``stream`` to ``messages`` until the end (then ``None``) or ``stopping``."""
    for message in _received(stream):
        while True:
            try:
                messages.put(message, timeout=0.05)
                break
            except queue.Full:
                if stopping.is_set():
                    return


def _receive(stream: IO[bytes]) -> Any:
    """The next message, or ``None`` at the end of the stream or a torn message."""
    try:
        head = stream.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack(head)
        payload = stream.read(length)
        if len(payload) < length:
            return None
        return pickle.loads(payload)
    except (OSError, ValueError, pickle.UnpicklingError):
        return None  # the child died mid-write


def _send(stream: IO[bytes], message: tuple[Any, ...]) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def read_ahead(events_dir: Path, after_seq: int, out: IO[bytes], decode_turns: bool | None = None) -> None:
    """The child's work: classify every chunk and send what the parent needs of it to ``out``.

    The turns of a chunk are decoded here (:func:`~projections.log_scan.read_turns`)
    if ``decode_turns``; by default, while the parent is the slower of the two
    (what it has not read yet of ``out`` fills a good part of the pipe, or
    that is unknown), else left to it: so the two processes share the work
    whatever the log and the machine.
    """
    stats = ScanStats()
    sent_invalid = 0
    for chunk in read_chunks(events_dir, after_seq, stats):
        lines, invalid = chunk.lines(after_seq)
        if decode_turns is None:
            unread = _unread_bytes(out)
            decoding = unread is None or unread >= _BEHIND_BYTES
        else:
            decoding = decode_turns
        if not decoding:
            layout: list[range | LiveTurn | Undecoded[Position] | None] = list(lines)
            turns: list[tuple[Any, ...]] = []
        else:
            items = read_turns(lines, invalid)
            # Turns travel as plain tuples, apart: a named tuple pickles several times slower.
            layout = [None if type(item) is LiveTurn else item for item in items]
            turns = [tuple(item) for item in items if type(item) is LiveTurn]
        # read_chunks adds a closed segment's torn end to stats as it passes it.
        _send(out, ("chunk", layout, turns, stats.invalid[sent_invalid:] + invalid))
        sent_invalid = len(stats.invalid)
    _send(out, ("end", stats.partial_tail, stats.invalid[sent_invalid:]))


def _main(argv: list[str]) -> int:
    gc.disable()  # the child makes no reference cycles; the collector's passes would be pure cost
    out = sys.stdout.buffer
    try:
        read_ahead(Path(argv[0]), int(argv[1]), out, {"always": True, "never": False}.get(argv[2]))
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
