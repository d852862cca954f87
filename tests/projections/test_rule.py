"""The user-texts rule as a pure fold: values for each case, and a property against a reference model."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from ingest.log.envelope import LogLine, decode_line
from projections.reader import line_items
from projections.rule import (
    DEFAULT_USER_ID,
    WHITESPACE,
    FoldResult,
    FoldState,
    Gap,
    SkipReason,
    UserTextRow,
    fold,
    line_key,
    normalize,
    reads,
    spoken_key,
    turn_time,
    typed_key,
)
from tests.projections.rule_cases import (
    CALL_START,
    STEP,
    MemoryTable,
    Step,
    build_log,
    call_time,
    closed,
    conversation_body,
    init,
    line,
    message,
    metadata,
    reference,
    stamp,
    transcript,
    user_entry,
    webhook,
)


T = TypeVar("T")


def run(
    lines: Sequence[LogLine | range],
    state: FoldState | None = None,
    table: MemoryTable | None = None,
) -> list[UserTextRow]:
    """Fold ``lines`` in one batch into ``table`` (a fresh one by default); return the whole table."""
    table = table if table is not None else MemoryTable()
    table.apply(fold(state if state is not None else FoldState(), lines, table))
    return table.table()


def sightings(row: UserTextRow) -> list[list[Any]]:
    return orjson.loads(row.metadata)["sightings"]  # type: ignore[no-any-return]


def rest(seq: int, body: dict[str, Any], **kwargs: Any) -> LogLine:
    conversation_id = body.get("conversation_id")
    return line(seq, orjson.dumps(body).decode(), source="rest", connection_id=None,
                conversation_id=conversation_id, **kwargs)  # fmt: skip


def hook(seq: int, body: str, conversation_id: str | None = "conv_1") -> LogLine:
    return line(seq, body, source="webhook", connection_id=f"hook-{seq}", conversation_id=conversation_id)


# -- one source at a time ------------------------------------------------------------------------


def test_final_transcript_gives_a_row_with_every_column() -> None:
    """A received user_transcript becomes a row; metadata keeps the frame byte for byte."""
    frame = (
        '{"type":"user_transcript","user_transcription_event":{"user_transcript":"Ol\\u00e1","event_id":3}}'
    )
    result = fold(FoldState(), [line(7, frame, conversation_id="conv_9")], MemoryTable())
    assert result.gaps == [Gap(0, 7)]
    [row] = result.rows
    assert row.id == 7_000_000
    assert row.kind == "user_transcript"
    assert row.session_id == "conv_9"
    assert row.user_id == DEFAULT_USER_ID
    assert row.text == "Olá"
    assert row.timestamp == stamp(7)
    assert row.seq == 7
    assert row.sources == '["agent_ws"]'
    assert row.dedup_key == spoken_key("conv_9", "3", "Olá")
    assert row.metadata == (
        '{"raw_event":' + frame + ',"seq":7,"source":"agent_ws","event_id":3,"entry":null,'
        '"sightings":[["agent_ws",7,null,"audio",null]]}'
    )
    assert orjson.loads(row.metadata)["raw_event"]["user_transcription_event"]["user_transcript"] == "Olá"


def test_typed_messages_are_numbered_per_text() -> None:
    """Typing "yes" twice is said twice: occurrences 1 and 2 of that text."""
    rows = run([line(s, message(t), direction="out") for s, t in ((1, "yes"), (2, "no"), (3, " yes "))])
    assert [(r.kind, r.text, r.dedup_key) for r in rows] == [
        ("user_message", "yes", typed_key("conv_1", "yes", 1)),
        ("user_message", "no", typed_key("conv_1", "no", 1)),
        ("user_message", " yes ", typed_key("conv_1", "yes", 2)),
    ]
    assert orjson.loads(rows[0].metadata)["event_id"] is None


def test_resent_transcript_is_one_row_but_a_repeated_message_is_two() -> None:
    """Same conversation, event_id and text: a resend. Typing "yes" twice: said twice."""
    rows = run(
        [
            line(1, transcript("yes", 4)),
            line(2, transcript("yes ", 4)),  # resent frame (texts compare normalised)
            line(3, transcript("yes", 5)),  # a new turn, same words
            line(4, message("yes"), direction="out"),
            line(5, message("yes"), direction="out"),
        ]
    )
    assert [row.seq for row in rows] == [1, 3, 4, 5]
    assert [len(sightings(row)) for row in rows] == [2, 1, 1, 1]


def test_same_event_id_in_another_conversation_is_another_turn() -> None:
    rows = run([line(1, transcript("yes", 4)), line(2, transcript("yes", 4), conversation_id="conv_2")])
    assert len(rows) == 2


def test_sightings_without_the_ids_are_their_own_rows() -> None:
    """Without the ids a resend cannot be proven, so nothing is merged (nothing lost)."""
    body = conversation_body(None, [user_entry("yes", 1)])
    rows = run(
        [
            line(1, transcript("yes", None)),
            line(2, transcript("yes", None)),
            line(3, transcript("yes", True)),  # a boolean is not an event id
            line(4, transcript("yes", 1), conversation_id=None),
            line(5, message("yes"), direction="out", conversation_id=None),
            rest(6, body),
            rest(7, body),
        ]
    )
    keys = [line_key(s) for s in (1, 2, 3, 4, 5)] + [line_key(6, 1), line_key(7, 1)]
    assert [row.dedup_key for row in rows] == keys


def test_keys_are_length_prefixed_and_texts_normalised() -> None:
    assert spoken_key("c", "3", "t") == spoken_key("c", str(3), "t")
    assert spoken_key("c:1", "2", "t") != spoken_key("c", "1:2", "t")
    assert normalize(" a \u3000\u200b b\n") == "a b"


@pytest.mark.parametrize("text", ["", " ", "\t\n", "\u3000", "\u200b", "\xa0 \ufeff"])
def test_blank_texts_are_skipped_and_counted(text: str) -> None:
    assert normalize(text) == ""
    body = conversation_body("conv_1", [user_entry(text, 1)])
    result = fold(
        FoldState(),
        [line(1, transcript(text)), line(2, message(text), direction="out"), rest(3, body)],
        MemoryTable(),
    )
    assert result.rows == []
    assert result.skipped == {SkipReason.EMPTY_TEXT: 3}


def test_text_is_kept_as_received() -> None:
    [row] = run([line(1, message("  yes\n"), direction="out")])
    assert row.text == "  yes\n"


@pytest.mark.parametrize(
    "frame",
    [
        transcript(None),
        transcript(5),
        '{"type":"user_transcript"}',
        '{"type":"user_transcript","user_transcription_event":"text"}',
    ],
)
def test_user_transcript_without_a_string_text_is_no_text(frame: str) -> None:
    result = fold(FoldState(), [line(1, frame)], MemoryTable())
    assert result.rows == [] and result.skipped == {SkipReason.NO_TEXT: 1}


def test_user_message_with_null_text_is_no_text() -> None:
    result = fold(FoldState(), [line(1, message(None), direction="out")], MemoryTable())
    assert result.rows == [] and result.skipped == {SkipReason.NO_TEXT: 1}


@pytest.mark.parametrize(
    ("frame", "direction", "source"),
    [
        (
            '{"type":"tentative_user_transcript","tentative_user_transcription_event":{"user_transcript":"I"}}',
            "in",
            "agent_ws",
        ),
        (
            '{"type":"agent_response","agent_response_event":{"agent_response":"Sure","event_id":4}}',
            "in",
            "agent_ws",
        ),
        (
            '{"type":"agent_chat_response_part","text_response_part":{"text":"Su","type":"delta"}}',
            "in",
            "agent_ws",
        ),
        (transcript("yes"), "out", "agent_ws"),  # not received: not a transcript of the user
        (message("yes"), "in", "agent_ws"),  # the server never sends user_message
        (message("yes"), "in", "monitor"),  # not a shape the monitor is known to send
        (message("yes"), None, "monitor"),  # no direction: not one the rule reads
        (transcript("yes"), None, "agent_ws"),
        (transcript("yes"), "in", "capture"),
        (transcript("yes"), "in", "someone_else"),
        ("not json", "in", "agent_ws"),
        ("[1,2]", "in", "rest"),
        (b"\x00binary", "in", "webhook"),
        (orjson.dumps({"transcript": "none"}).decode(), "in", "rest"),
    ],
)
def test_everything_else_is_not_projected_and_not_a_skip(
    frame: str | bytes, direction: str | None, source: str
) -> None:
    result = fold(FoldState(), [line(1, frame, direction=direction, source=source)], MemoryTable())
    assert result.rows == [] and not result.skipped and result.lines == 1


@pytest.mark.parametrize(
    ("envelope", "expected"),
    [
        ({"source": "agent_ws", "direction": "in", "event": {"type": "user_transcript"}}, True),
        ({"source": "agent_ws", "direction": "out", "event": {"type": "user_message"}}, True),
        (
            {
                "source": "agent_ws",
                "direction": "out",
                "event": {"type": "conversation_initiation_client_data"},
            },
            True,
        ),
        ({"source": "capture", "direction": "in", "event": {"type": "connection_closed"}}, True),
        ({"source": "monitor", "direction": "in", "event": {"type": "user_transcript"}}, True),
        ({"source": "rest", "event": {"type": "anything"}}, True),
        ({"source": "rest", "raw": "[1,"}, True),
        ({"source": "rest", "raw_b64": "AA=="}, False),
        ({"source": "webhook", "event": {"type": "post_call_transcription"}}, True),
        ({"source": "webhook", "event": {"type": "post_call_audio"}}, False),
        ({"source": "webhook", "raw": "{\n}"}, True),
        ({"source": "agent_ws", "direction": "in", "event": {"type": "user_message"}}, False),
        ({"source": "agent_ws", "direction": "", "event": {"type": "ping"}}, False),
        ({"source": "agent_ws", "direction": "in", "event": {"type": "ping"}}, False),
        ({"source": "agent_ws", "direction": "in", "event": {"type": ["user_transcript"]}}, False),
        ({"source": "agent_ws", "direction": "in", "event": {"type": {"a": 1}}}, False),
        ({"source": "agent_ws", "direction": "in", "event": 5}, False),
        ({"source": "agent_ws", "direction": "in", "raw": "user_transcript"}, False),
        ({"source": ["rest"], "event": {}}, False),
        ({"event": {"type": "user_transcript"}}, False),
    ],
)
def test_reads_names_the_lines_the_fold_reads(envelope: dict[str, Any], expected: bool) -> None:
    """Whatever the JSON types in the envelope: a list or an object as a frame type is not an error."""
    assert reads(envelope) is expected


@pytest.mark.parametrize("kind", ["post_call_audio", "call_initiation_failure", "something_new"])
def test_other_webhook_types_give_no_rows(kind: str) -> None:
    data = conversation_body("conv_1", [user_entry("yes", 1)])
    data["full_audio"] = "UklGRg=="
    result = fold(FoldState(), [hook(1, webhook(data, kind))], MemoryTable())
    assert result.rows == [] and not result.skipped


def test_user_id_comes_from_the_init_frame_of_the_same_connection() -> None:
    """The init frame is logged before the conversation id is known: the connection links them."""
    state = FoldState()
    rows = run(
        [
            line(1, init("user-123"), direction="out", connection_id="A", conversation_id=None),
            line(2, metadata("conv_a"), connection_id="A", conversation_id=None),
            line(3, transcript("hi"), connection_id="A", conversation_id="conv_a"),
            line(4, message("typed"), direction="out", connection_id="A", conversation_id="conv_a"),
            line(5, transcript("hi"), connection_id="B", conversation_id="conv_b"),
            line(6, transcript("hi", 2, user_id="from-event"), connection_id="B", conversation_id="conv_b"),
            line(7, init(""), direction="out", connection_id="C", conversation_id=None),
            line(8, transcript("hi"), connection_id="C", conversation_id="conv_c"),
        ],
        state,
    )
    assert [row.user_id for row in rows] == [
        "user-123",
        "user-123",
        DEFAULT_USER_ID,
        "from-event",
        DEFAULT_USER_ID,
    ]
    assert state.user_ids == {"A": "user-123"}


def test_an_init_frame_applies_only_to_later_turns() -> None:
    rows = run(
        [
            line(1, transcript("before", 1), connection_id="A"),
            line(2, init("late"), direction="out", connection_id="A"),
            line(3, transcript("after", 2), connection_id="A"),
        ]
    )
    assert [row.user_id for row in rows] == [DEFAULT_USER_ID, "late"]


def test_a_closed_connection_is_forgotten() -> None:
    """capture's connection_closed record ends the per-connection state, so it stays small."""
    state = FoldState()
    lines = [
        line(1, init("u-1"), direction="out", connection_id="A"),
        line(2, message("yes"), direction="out", connection_id="A"),
        line(3, closed(), source="capture", connection_id="A"),
    ]
    result = fold(state, lines, MemoryTable())
    assert state.user_ids == {} and state.typed == {}
    assert result.user_ids == {"A": None} and result.closed == {"A"} and result.typed == {}
    result = fold(state, [line(4, message("yes"), direction="out", connection_id="B")], MemoryTable())
    assert state.typed == {"B": {("conv_1", "yes"): 1}} and result.typed == state.typed


def test_duplicated_lines_are_skipped_and_gaps_reported() -> None:
    state, table = FoldState(), MemoryTable()
    first = fold(
        state, [line(1, message("a"), direction="out"), line(2, message("b"), direction="out")], table
    )
    table.apply(first)
    again = fold(
        state, [line(2, message("b"), direction="out"), line(5, message("c"), direction="out")], table
    )
    table.apply(again)
    assert [row.seq for row in table.table()] == [1, 2, 5]
    assert again.skipped == {SkipReason.DUPLICATE_LINE: 1}
    assert again.gaps == [Gap(2, 5)] and again.gaps[0].missing == 2
    assert state.last_seq == 5 and again.last_seq == 5


def test_runs_of_lines_the_rule_does_not_read_fold_like_single_lines() -> None:
    """A range stands for consecutive seqs: it moves the position, shows gaps and duplicates."""
    state, table = FoldState(), MemoryTable()
    assert fold(state, [range(1, 5)], table).lines == 4 and state.last_seq == 4
    overlap = fold(state, [range(3, 8)], table)
    assert (overlap.lines, overlap.skipped, overlap.gaps) == (3, {SkipReason.DUPLICATE_LINE: 2}, [])
    assert fold(state, [range(2, 4)], table).skipped == {SkipReason.DUPLICATE_LINE: 2}
    jump = fold(state, [range(10, 12), line(12, message("hi"), direction="out")], table)
    assert jump.gaps == [Gap(7, 10)] and [r.seq for r in jump.rows] == [12] and state.last_seq == 12


# -- one turn, one row ---------------------------------------------------------------------------


def three_sources(order: Sequence[str]) -> list[LogLine]:
    """One conversation seen live (agent_ws), then fetched (rest) and delivered (webhook), in ``order``."""
    body = conversation_body(
        "conv_1",
        [
            user_entry("I need help", 4, "audio", 2),
            user_entry("yes", 9, "text", 3),
            user_entry("yes", 12.5, "text", 4),
        ],
        start=CALL_START - 30,  # the call started before the live lines were stamped
    )
    frames = {
        "agent_ws": [
            ("agent_ws", transcript("I need help", 2), "in"),
            ("agent_ws", message("yes"), "out"),
            ("agent_ws", message("yes"), "out"),
        ],
        "rest": [("rest", orjson.dumps(body).decode(), "in")],
        "webhook": [("webhook", webhook(body), "in")],
    }
    lines: list[LogLine] = []
    for source, frame, direction in itertools.chain.from_iterable(frames[name] for name in order):
        seq = len(lines) + 1
        lines.append(line(seq, frame, source=source, direction=direction, received_at=stamp(seq)))
    return lines


def test_a_turn_seen_live_fetched_and_delivered_is_one_row() -> None:
    rows = run(three_sources(["agent_ws", "rest", "webhook"]))
    assert [(r.text, r.kind, r.sources, r.seq) for r in rows] == [
        ("I need help", "user_transcript", '["agent_ws","rest","webhook"]', 1),
        ("yes", "user_message", '["agent_ws","rest","webhook"]', 2),
        ("yes", "user_message", '["agent_ws","rest","webhook"]', 3),
    ]
    # The earliest time: the call's start plus the entry's offset is before the live stamps.
    assert [r.timestamp for r in rows] == [call_time(4 - 30), call_time(9 - 30), call_time(12.5 - 30)]
    assert [r.user_id for r in rows] == ["user-rest"] * 3  # the live lines knew none
    assert [[s[0] for s in sightings(r)] for r in rows] == [["agent_ws", "rest", "webhook"]] * 3
    first = orjson.loads(rows[0].metadata)
    assert first["raw_event"]["type"] == "user_transcript" and first["entry"] is None


def test_the_order_sources_arrive_in_changes_no_turn() -> None:
    """Every arrival order gives the same turns: keys, kinds, times, sources."""

    def turns(order: Sequence[str]) -> list[tuple[Any, ...]]:
        rows = run(three_sources(order))
        return sorted((r.dedup_key, r.kind, r.session_id, r.timestamp, r.sources, r.user_id) for r in rows)

    orders = list(itertools.permutations(["agent_ws", "rest", "webhook"]))
    assert len({tuple(turns(order)) for order in orders}) == 1
    rest_first = run(three_sources(["rest", "webhook", "agent_ws"]))
    assert orjson.loads(rest_first[0].metadata)["raw_event"] is None  # first seen in a REST body
    assert orjson.loads(rest_first[0].metadata)["entry"] == 1


def test_kind_follows_the_medium_a_source_knows() -> None:
    """The monitor cannot tell typed from spoken; REST's source_medium can."""
    body = conversation_body(
        "conv_1", [user_entry("typed it", 3, "text", 7), user_entry("said it", 5, "audio", 8)]
    )
    lines = [
        line(1, transcript("typed it", 7), source="monitor", connection_id="m1"),
        line(2, transcript("said it", 8), source="monitor", connection_id="m1"),
    ]
    monitor_only = run(lines)
    assert [r.kind for r in monitor_only] == ["user_transcript", "user_transcript"]
    rows = run([*lines, rest(3, body)])
    assert [(r.text, r.kind, r.sources) for r in rows] == [
        ("typed it", "user_message", '["monitor","rest"]'),
        ("said it", "user_transcript", '["monitor","rest"]'),
    ]


def test_an_alias_arriving_later_merges_two_rows_into_one() -> None:
    """A typed turn seen live both as our own user_message and on the monitor: REST ties them."""
    body = conversation_body("conv_1", [user_entry("yes", 3, "text", 7)])
    lines = [
        line(1, message("yes"), direction="out", connection_id="A"),
        line(2, transcript("yes", 7), source="monitor", connection_id="m1"),
    ]
    state, table = FoldState(), MemoryTable()
    assert len(run(lines, state, table)) == 2  # nothing says they are one turn yet
    result = fold(state, [rest(3, body)], table)
    assert (result.inserted, result.merged, result.deleted) == (0, 1, [2_000_000])
    table.apply(result)
    [row] = table.table()
    assert (row.id, row.sources, row.kind) == (1_000_000, '["agent_ws","monitor","rest"]', "user_message")
    assert row == run([*lines, rest(3, body)])[0]  # the same as in one batch


def test_when_transcripts_disagree_the_first_alias_wins() -> None:
    """Two bodies number a typed "yes" differently: the id goes to the typed turn named first."""
    first = conversation_body("conv_1", [user_entry("yes", 3, "text", 7)])
    second = conversation_body("conv_1", [user_entry("yes", 1, "text", 6), user_entry("yes", 3, "text", 7)])
    lines = [rest(1, first), hook(2, webhook(second)), line(3, transcript("yes", 7), source="monitor")]
    rows = run(lines)
    assert [(r.dedup_key, r.sources) for r in rows] == [
        (typed_key("conv_1", "yes", 1), '["monitor","rest","webhook"]'),
        (typed_key("conv_1", "yes", 2), '["webhook"]'),
    ]
    # Delivered first, the webhook names the typed turn the id stands for.
    swapped = run([hook(1, webhook(second)), rest(2, first), line(3, transcript("yes", 7), source="monitor")])
    assert [r.sources for r in swapped] == ['["rest","webhook"]', '["monitor","webhook"]']


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from([*"ab é", *WHITESPACE, "\x00", "\x7f"]), max_size=12))
def test_normalize_collapses_exactly_the_blank_characters(text: str) -> None:
    words = [w for w in re.split("[" + re.escape(WHITESPACE) + "]", text) if w]
    assert normalize(text) == " ".join(words)


def test_the_same_words_twice_stay_two_rows() -> None:
    body = conversation_body("conv_1", [user_entry("yes", 1, "audio", 2), user_entry("yes", 5, "audio", 3)])
    rows = run([line(1, transcript("yes", 2)), line(2, transcript("yes", 3)), rest(3, body)])
    assert [(r.text, r.sources) for r in rows] == [("yes", '["agent_ws","rest"]')] * 2


def test_a_replayed_delivery_and_a_refetch_give_no_new_rows() -> None:
    body = conversation_body("conv_1", [user_entry("yes", 1, "text", 2), user_entry("hi", 2, "audio", 3)])
    state, table = FoldState(), MemoryTable()
    run([hook(1, webhook(body)), rest(2, body)], state, table)
    before = table.table()
    again = fold(state, [hook(3, webhook(body)), rest(4, body), hook(5, webhook(body, pretty=True))], table)
    assert (again.inserted, again.merged, again.skipped) == (0, 0, {SkipReason.DUPLICATE_TURN: 6})
    table.apply(again)
    after = table.table()
    assert [(r.id, r.dedup_key, r.timestamp, r.sources) for r in after] == [
        (r.id, r.dedup_key, r.timestamp, r.sources) for r in before
    ]
    assert [[s[1] for s in sightings(r)] for r in after] == [[1, 2, 3, 4, 5]] * 2


def test_a_pretty_printed_webhook_body_projects() -> None:
    body = conversation_body("conv_1", [user_entry("Olá, preciso de ajuda", 2, "audio", 2)])
    logged = hook(1, webhook(body, pretty=True))
    assert logged.event is None and "raw" in logged.envelope
    [row] = run([logged])
    assert (row.text, row.sources, row.timestamp) == ("Olá, preciso de ajuda", '["webhook"]', call_time(2))


def test_a_turn_time_needs_numbers_else_the_line_time() -> None:
    assert turn_time(1_700_000_000, 2.5) == "2023-11-14T22:13:22.500000Z"
    assert turn_time(1_700_000_000, 0.0000014) == "2023-11-14T22:13:20.000001Z"
    for start, offset in [(None, 1), (1_700_000_000, None), (True, 1), ("1", 1), (-1, 1), (1, -1), (1, 1e12)]:
        assert turn_time(start, offset) is None
    body = conversation_body("conv_1", [user_entry("yes", None)], start=None)
    [row] = run([rest(1, body, received_at=stamp(1))])
    assert row.timestamp == stamp(1)


def test_rest_user_id_falls_back_to_the_initiation_data() -> None:
    body = conversation_body("conv_1", [user_entry("yes", 1)], user_id="")
    body["conversation_initiation_client_data"] = {"user_id": "user-init"}
    assert run([rest(1, body)])[0].user_id == "user-init"
    del body["conversation_initiation_client_data"]
    assert run([rest(1, body)])[0].user_id == DEFAULT_USER_ID


def test_entries_without_ids_match_on_medium_text_and_occurrence() -> None:
    entries = [user_entry("ok", 1, "audio"), user_entry("ok", 2, "audio"), user_entry("ok", 3, "image")]
    body = conversation_body("conv_1", entries)
    rows = run([rest(1, body), hook(2, webhook(body))])
    assert [r.sources for r in rows] == ['["rest","webhook"]'] * 3
    assert [r.kind for r in rows] == ["user_transcript"] * 3


# -- the property --------------------------------------------------------------------------------


def _split(items: Sequence[T], cuts: list[int]) -> list[Sequence[T]]:
    bounds = sorted({min(c, len(items)) for c in cuts} | {0, len(items)})
    return [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(STEP, min_size=10, max_size=60),
    cuts=st.lists(st.integers(0, 70), max_size=8),
    form=st.sampled_from(["decoded", "read"]),
)
def test_any_frames_in_any_batches_equal_the_reference_model(
    steps: list[Step], cuts: list[int], form: str
) -> None:
    """Property: folding in any batch sizes (carrying the state and the table) gives the model's rows.

    The model groups all sightings of the whole log at once; the fold merges
    them batch by batch, so this also checks that batch boundaries and the
    order sightings arrive in do not matter. The lines go in fully decoded,
    or as the log reader hands them on (ranges of seqs for the lines the
    rule does not read).
    """
    raw = build_log(steps)
    items: Sequence[LogLine | range]
    if form == "decoded":
        items = [decode_line(r) for r in raw]
    else:
        items, invalid = line_items(raw)
        assert invalid == []
    state, table = FoldState(), MemoryTable()
    results: list[FoldResult] = []
    for batch in _split(items, cuts):
        results.append(fold(state, batch, table))
        table.apply(results[-1])
    model = reference(raw)
    assert table.table() == model.rows
    skipped: Counter[str] = sum((r.skipped for r in results), Counter())
    turns = skipped.pop(SkipReason.DUPLICATE_TURN, 0)
    assert {str(k): v for k, v in skipped.items()} == model.skipped
    inserted, merged = sum(r.inserted for r in results), sum(r.merged for r in results)
    assert inserted - merged == len(model.rows) and inserted + turns == model.sightings
    assert [(g.after_seq, g.next_seq) for r in results for g in r.gaps] == model.gaps
    assert state.last_seq == max((orjson.loads(r)["seq"] for r in raw), default=0)
    # One pass from a fresh state gives the same table.
    assert run(items) == model.rows


def test_the_reference_model_sees_what_build_log_writes() -> None:
    """A guard on the test material itself: a mixed log gives rows from every source."""
    body = {"conversation_id": "conv-a", "transcript": [user_entry("yes", 1, "text", 1)]}
    steps = [
        Step("metadata", 0, "conv-a"),
        Step("message", 0, "yes"),
        Step("monitor", 1, ("conv-a", "yes"), 1),
        Step("rest", 0, body),
        Step("webhook", 0, body, "post_call_transcription", True),
    ]
    [row] = reference(build_log(steps)).rows
    assert row.sources == '["agent_ws","monitor","rest","webhook"]' and row.kind == "user_message"
