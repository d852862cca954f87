"""The user-texts rule as a pure fold: values for each case, and a property against a reference model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TypeVar

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from ingest.envelope import LogLine, decode_line
from projections.log_scan import classify_lines
from projections.user_texts import (
    DEFAULT_USER_ID,
    FoldState,
    Gap,
    SkipReason,
    UserTextRow,
    fold,
    is_blank,
    message_key,
    transcript_key,
)
from tests.user_text_cases import (
    STEP,
    Step,
    build_log,
    init,
    line,
    message,
    metadata,
    reference,
    stamp,
    transcript,
)


T = TypeVar("T")


def table(rows: Sequence[UserTextRow]) -> list[UserTextRow]:
    """What the table keeps: the first row per dedup key."""
    kept: dict[str, UserTextRow] = {}
    for row in rows:
        kept.setdefault(row.dedup_key, row)
    return list(kept.values())


def run(lines: Sequence[LogLine], state: FoldState | None = None) -> tuple[list[UserTextRow], FoldState]:
    state = state or FoldState()
    return table(fold(state, lines).rows), state


def test_final_transcript_gives_a_row_with_every_column() -> None:
    """A received user_transcript becomes a row; metadata keeps the frame byte for byte."""
    frame = (
        '{"type":"user_transcript","user_transcription_event":{"user_transcript":"Ol\\u00e1","event_id":3}}'
    )
    result = fold(FoldState(), [line(7, frame, conversation_id="conv_9")])
    assert result.gaps == [Gap(0, 7)]
    [row] = result.rows
    assert row.kind == "user_transcript"
    assert row.session_id == "conv_9"
    assert row.user_id == DEFAULT_USER_ID
    assert row.text == "Olá"
    assert row.timestamp == stamp(7)
    assert row.seq == 7
    assert row.sources == '["agent_ws"]'
    assert row.dedup_key == transcript_key("conv_9", "3", "Olá")
    assert row.metadata == '{"raw_event":' + frame + ',"seq":7,"source":"agent_ws","event_id":3}'
    assert orjson.loads(row.metadata)["raw_event"]["user_transcription_event"]["user_transcript"] == "Olá"


def test_typed_message_gives_a_row_keyed_by_its_seq() -> None:
    [row] = fold(FoldState(), [line(1, message("hello"), direction="out")]).rows
    assert (row.kind, row.text, row.dedup_key) == ("user_message", "hello", message_key("user_message", 1))
    assert orjson.loads(row.metadata)["event_id"] is None


def test_resent_transcript_is_one_row_but_a_repeated_message_is_two() -> None:
    """Same conversation, event_id and text: a resend. Typing "yes" twice: said twice."""
    rows, _ = run(
        [
            line(1, transcript("yes", 4)),
            line(2, transcript("yes", 4)),  # resent frame
            line(3, transcript("yes", 5)),  # a new turn, same words
            line(4, message("yes"), direction="out"),
            line(5, message("yes"), direction="out"),
        ]
    )
    assert [row.seq for row in rows] == [1, 3, 4, 5]


def test_same_event_id_in_another_conversation_is_another_turn() -> None:
    rows, _ = run([line(1, transcript("yes", 4)), line(2, transcript("yes", 4), conversation_id="conv_2")])
    assert len(rows) == 2


def test_transcript_without_event_id_or_conversation_is_keyed_by_seq() -> None:
    """Without the ids a resend cannot be proven, so nothing is merged (nothing lost)."""
    rows, _ = run(
        [
            line(1, transcript("yes", None)),
            line(2, transcript("yes", None)),
            line(3, transcript("yes", True)),  # a boolean is not an event id
            line(4, transcript("yes", 1), conversation_id=None),
            line(5, transcript("yes", 1), conversation_id=None),
        ]
    )
    assert [row.dedup_key for row in rows] == [message_key("user_transcript", s) for s in (1, 2, 3, 4, 5)]


def test_string_and_integer_event_ids_key_alike() -> None:
    assert transcript_key("c", "3", "t") == transcript_key("c", str(3), "t")
    assert transcript_key("c:1", "2", "t") != transcript_key("c", "1:2", "t")


@pytest.mark.parametrize("text", ["", " ", "\t\n", "\u3000", "\u200b", "\xa0 \ufeff"])
def test_blank_texts_are_skipped_and_counted(text: str) -> None:
    assert is_blank(text)
    result = fold(FoldState(), [line(1, transcript(text)), line(2, message(text), direction="out")])
    assert result.rows == []
    assert result.skipped == {SkipReason.EMPTY_TEXT: 2}


def test_text_is_kept_as_received() -> None:
    [row] = fold(FoldState(), [line(1, message("  yes\n"), direction="out")]).rows
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
    result = fold(FoldState(), [line(1, frame)])
    assert result.rows == [] and result.skipped == {SkipReason.NO_TEXT: 1}


def test_user_message_with_null_text_is_no_text() -> None:
    result = fold(FoldState(), [line(1, message(None), direction="out")])
    assert result.rows == [] and result.skipped == {SkipReason.NO_TEXT: 1}


@pytest.mark.parametrize(
    ("frame", "direction"),
    [
        (
            '{"type":"tentative_user_transcript","tentative_user_transcription_event":{"user_transcript":"I"}}',
            "in",
        ),
        ('{"type":"agent_response","agent_response_event":{"agent_response":"Sure","event_id":4}}', "in"),
        ('{"type":"agent_chat_response_part","text_response_part":{"text":"Su","type":"delta"}}', "in"),
        (transcript("yes"), "out"),  # not received: not a transcript of the user
        (message("yes"), "in"),  # the server never sends user_message
        ("not json", "in"),
        ("[1,2]", "in"),
        (b"\x00binary", "in"),
    ],
)
def test_everything_else_is_not_projected_and_not_a_skip(frame: str | bytes, direction: str) -> None:
    result = fold(FoldState(), [line(1, frame, direction=direction)])
    assert result.rows == [] and not result.skipped and result.lines == 1


def test_user_id_comes_from_the_init_frame_of_the_same_connection() -> None:
    """The init frame is logged before the conversation id is known: the connection links them."""
    rows, state = run(
        [
            line(1, init("user-123"), direction="out", connection_id="A", conversation_id=None),
            line(2, metadata("conv_a"), connection_id="A", conversation_id=None),
            line(3, transcript("hi"), connection_id="A", conversation_id="conv_a"),
            line(4, message("typed"), direction="out", connection_id="A", conversation_id="conv_a"),
            line(5, transcript("hi"), connection_id="B", conversation_id="conv_b"),
            line(6, transcript("hi", 2, user_id="from-event"), connection_id="B", conversation_id="conv_b"),
            line(7, init(""), direction="out", connection_id="C", conversation_id=None),
            line(8, transcript("hi"), connection_id="C", conversation_id="conv_c"),
        ]
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
    rows, _ = run(
        [
            line(1, transcript("before", 1), connection_id="A"),
            line(2, init("late"), direction="out", connection_id="A"),
            line(3, transcript("after", 2), connection_id="A"),
        ]
    )
    assert [row.user_id for row in rows] == [DEFAULT_USER_ID, "late"]


def test_duplicated_lines_are_skipped_and_gaps_reported() -> None:
    state = FoldState()
    first = fold(state, [line(1, message("a"), direction="out"), line(2, message("b"), direction="out")])
    again = fold(state, [line(2, message("b"), direction="out"), line(5, message("c"), direction="out")])
    assert [row.seq for row in first.rows + again.rows] == [1, 2, 5]
    assert again.skipped == {SkipReason.DUPLICATE_LINE: 1}
    assert again.gaps == [Gap(2, 5)] and again.gaps[0].missing == 2
    assert state.last_seq == 5 and again.last_seq == 5


def test_runs_of_lines_the_rule_does_not_read_fold_like_single_lines() -> None:
    """A range stands for consecutive seqs: it moves the position, shows gaps and duplicates."""
    state = FoldState()
    assert fold(state, [range(1, 5)]).lines == 4 and state.last_seq == 4
    overlap = fold(state, [range(3, 8)])
    assert (overlap.lines, overlap.skipped, overlap.gaps) == (3, {SkipReason.DUPLICATE_LINE: 2}, [])
    assert fold(state, [range(2, 4)]).skipped == {SkipReason.DUPLICATE_LINE: 2}
    jump = fold(state, [range(10, 12), line(12, message("hi"), direction="out")])
    assert jump.gaps == [Gap(7, 10)] and [r.seq for r in jump.rows] == [12] and state.last_seq == 12


def _split(items: Sequence[T], cuts: list[int]) -> list[Sequence[T]]:
    bounds = sorted({min(c, len(items)) for c in cuts} | {0, len(items)})
    return [items[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(STEP, min_size=5, max_size=80),
    cuts=st.lists(st.integers(0, 90), max_size=8),
    classified=st.booleans(),
)
def test_any_frames_in_any_batches_equal_the_reference_model(
    steps: list[Step], cuts: list[int], classified: bool
) -> None:
    """Property: folding in any batch sizes (carrying the state) gives the model's rows.

    The lines go in either fully decoded, or as the log scanner hands them on
    (ranges of seqs for the lines the rule does not read).
    """
    raw = build_log(steps)
    items: Sequence[LogLine | range]
    if classified:
        items, invalid = classify_lines(raw)
        assert invalid == []
    else:
        items = [decode_line(r) for r in raw]
    state = FoldState()
    rows: list[UserTextRow] = []
    skipped: Counter[str] = Counter()
    gaps: list[Gap] = []
    for batch in _split(items, cuts):
        result = fold(state, batch)
        rows.extend(result.rows)
        skipped.update(result.skipped)
        gaps.extend(result.gaps)
    kept = table(rows)
    model = reference(raw)
    assert [(r.kind, r.session_id, r.user_id, r.text, r.timestamp, r.seq) for r in kept] == model.rows
    assert {str(k): v for k, v in skipped.items()} == model.skipped
    assert [(g.after_seq, g.next_seq) for g in gaps] == model.gaps
    assert state.last_seq == max((orjson.loads(r)["seq"] for r in raw), default=0)
    # One pass from a fresh state gives the same table.
    assert table(fold(FoldState(), items).rows) == kept
