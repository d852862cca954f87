"""The log tally: lines appended since a position, by source, direction and type, from real segments."""

from __future__ import annotations

from pathlib import Path

from ingest.log.envelope import Origin
from ingest.log.frames import inspect_frame
from ingest.log.segments import RotationPolicy
from ingest.log.tally import KNOWN_TYPES, LogTally
from ingest.log.writer import FsyncPolicy, LogWriter, events_dir
from ingest.simulator import events


AGENT_IN = Origin("agent_ws", "in", "agent_x", "c1", "conv_1")
AGENT_OUT = Origin("agent_ws", "out", "agent_x", "c1", "conv_1")


def open_writer(data_dir: Path, **kwargs: object) -> LogWriter:
    return LogWriter.open(data_dir, fsync=FsyncPolicy.NEVER, command="test", **kwargs)  # type: ignore[arg-type]


def tally_of(writer: LogWriter) -> LogTally:
    segment = writer.active_segment
    assert segment is not None
    return LogTally(events_dir(writer.data_dir), segment, segment.stat().st_size)


def test_counts_lines_by_source_direction_and_a_bounded_type(data_dir: Path) -> None:
    """Known types are themselves; unknown ones `other`; no type `none`; not JSON `not_json`; odd sources `other`."""
    with open_writer(data_dir) as writer:
        tally = tally_of(writer)
        writer.append(AGENT_IN, inspect_frame('{"type":"user_transcript","user_transcription_event":{}}'))
        writer.append(AGENT_IN, inspect_frame('{"type":"user_transcript","user_transcription_event":{}}'))
        writer.append(AGENT_OUT, inspect_frame('{"type":"user_message","text":"hi"}'))
        writer.append(AGENT_IN, inspect_frame('{"type":"x-attacker-' + "a" * 40 + '"}'))
        writer.append(
            AGENT_IN, inspect_frame('{"ping_event":{"event_id":1},"type":"ping"}')
        )  # type not first
        writer.append(
            Origin("rest", "in", "a", None, "conv_2"), inspect_frame('{"conversation_id":"conv_2"}')
        )
        writer.append(AGENT_IN, inspect_frame("not json {"))
        writer.append(AGENT_IN, inspect_frame(b"\x00\x01"))
        writer.append(Origin("somebody", "in", None, None, None), inspect_frame('{"type":"ping"}'))
        writer.append(AGENT_IN, inspect_frame('{"type":"we\\"ird"}'))  # an escaped quote in the type
        tally.update()
    assert tally.counts == {
        ("agent_ws", "in", "user_transcript"): 2,
        ("agent_ws", "out", "user_message"): 1,
        ("agent_ws", "in", "other"): 2,
        ("agent_ws", "in", "ping"): 1,
        ("rest", "in", "none"): 1,
        ("agent_ws", "in", "not_json"): 2,
        ("other", "in", "ping"): 1,
    }
    assert tally.lines == 10


def test_counts_only_what_was_appended_after_its_position_and_each_line_once(data_dir: Path) -> None:
    with open_writer(data_dir) as writer:
        writer.append(AGENT_IN, inspect_frame('{"type":"ping"}'))
    with open_writer(data_dir) as writer:  # a new process: the old line is not its own
        tally = tally_of(writer)
        tally.update()
        assert tally.lines == 0
        writer.append(AGENT_IN, inspect_frame('{"type":"agent_response"}'))
        tally.update()
        tally.update()
        writer.append(AGENT_IN, inspect_frame('{"type":"agent_response"}'))
        tally.update()
    assert tally.counts == {("agent_ws", "in", "agent_response"): 2}


def test_a_line_being_written_waits_for_its_newline(data_dir: Path) -> None:
    with open_writer(data_dir) as writer:
        tally = tally_of(writer)
        writer.append(AGENT_IN, inspect_frame('{"type":"ping"}'))
        segment = writer.active_segment
        assert segment is not None
        whole = segment.read_bytes()
    half = len(whole) // 2
    segment.write_bytes(whole[:half])
    tally.update()
    assert tally.lines == 0
    segment.write_bytes(whole)
    tally.update()
    assert tally.counts == {("agent_ws", "in", "ping"): 1}


def test_follows_the_writer_across_rolled_segments_within_the_byte_budget(data_dir: Path) -> None:
    """Each call reads at most max_bytes; the rest is counted by the next calls; rolled segments are finished first."""
    with open_writer(data_dir, rotation=RotationPolicy(max_bytes=2000, max_age=3600)) as writer:
        tally = tally_of(writer)
        for i in range(200):
            writer.append(AGENT_IN, inspect_frame(events.flood_frame(i)))
        assert writer.stats.rotations > 5
        calls = 0
        while tally.update(max_bytes=5000, chunk=1000):
            calls += 1
    assert tally.counts == {("agent_ws", "in", "user_transcript"): 200}
    assert calls > 5


def test_a_line_longer_than_a_chunk_is_counted_whole(data_dir: Path) -> None:
    with open_writer(data_dir) as writer:
        tally = tally_of(writer)
        writer.append(AGENT_IN, inspect_frame(events.huge_frame(1, 100_000)))
        writer.append(AGENT_IN, inspect_frame('{"type":"ping"}'))
        tally.update(chunk=4096)
    assert tally.counts == {("agent_ws", "in", "user_transcript"): 1, ("agent_ws", "in", "ping"): 1}


def test_every_type_the_simulator_sends_is_known() -> None:
    """The label set covers the platform's documented events (the simulator's every_event), less its made-up one."""
    sent = {event["type"] for event in events.every_event(1, timestamp="2026-01-01T00:00:00Z")}
    sent |= {event["type"] for event in events.extra_events(1, None)}
    assert sent - KNOWN_TYPES == {"simulator_future_event"}
