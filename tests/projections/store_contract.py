"""What every projection store must do (:class:`projections.store.Store`): one test class for all of them.

A backend's test module subclasses :class:`StoreContract` and says how to open
its store, rebuild into it and read its rows back (``tests/projections/test_sqlite.py``);
the tests are the same for every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest.errors import CaptureError, ProjectionError
from ingest.log.envelope import LogLine
from projections.rule import FoldState, fold, typed_key
from projections.store import Store
from tests.projections.rule_cases import (
    closed,
    conversation_body,
    init,
    line,
    message,
    transcript,
    user_entry,
)


def lines() -> list[LogLine]:
    """A connection with a user id, two typed turns, a spoken one, then a REST body naming all three."""
    body = conversation_body("conv_1", [user_entry("yes", 1, "text"), user_entry("hi", 2, "audio", 5)])
    return [
        line(1, init("u-1"), direction="out", connection_id="A"),
        line(2, message("yes"), direction="out", connection_id="A"),
        line(3, transcript("hi", 5), connection_id="A"),
        line(4, message("yes"), direction="out", connection_id="A"),
        line(5, b'{"type":"ping"}', connection_id="A"),
        line(6, orjson.dumps(body).decode(), source="rest", connection_id=None),
        line(7, closed(), source="capture", connection_id="A"),
    ]


class StoreContract(ABC):
    """The behaviour every store must have; subclass and implement the three hooks."""

    @abstractmethod
    def open_store(self, where: Path) -> Store:
        """Open (creating if needed) the store kept at ``where``."""

    @abstractmethod
    def rebuild_into(self, where: Path, fill: Callable[[Store], None]) -> str:
        """Fill a new store with ``fill`` and swap it in for the one at ``where``."""

    @abstractmethod
    def stored_rows(self, where: Path) -> list[tuple[Any, ...]]:
        """The rows stored at ``where`` as a reader sees them, in id order."""

    @pytest.fixture
    def where(self, tmp_path: Path) -> Path:
        return tmp_path / "store"

    def apply_all(self, store: Store, batch: list[LogLine]) -> int | None:
        from_seq = store.last_seq
        return store.apply(fold(store.state, batch, store), from_seq)

    def test_a_new_store_is_empty_at_position_0(self, where: Path) -> None:
        store = self.open_store(where)
        try:
            assert store.last_seq == 0 and store.state == FoldState()
            assert store.rows(["typed:x"]) == {} and store.aliases(["spoken:x"]) == {}
        finally:
            store.close()
        assert self.stored_rows(where) == []

    def test_a_batch_is_stored_with_the_folds_state_and_position(self, where: Path) -> None:
        """Batch by batch or at once, the same rows; the state carries over a reopen, and ends with its connection."""
        store = self.open_store(where)
        try:
            assert self.apply_all(store, lines()[:4]) == 3
            assert store.last_seq == 4
        finally:
            store.close()
        store = self.open_store(where)
        try:
            assert store.state.user_ids == {"A": "u-1"}
            assert store.state.typed == {"A": {("conv_1", "yes"): 2}}
            assert store.rows([typed_key("conv_1", "yes", 2)])
            assert self.apply_all(store, lines()[4:]) == 0  # the REST body names turns already stored
            assert store.last_seq == 7 and store.state == FoldState(7)
        finally:
            store.close()
        rows = self.stored_rows(where)
        assert [row[8] for row in rows] == ['["agent_ws","rest"]', '["agent_ws","rest"]', '["agent_ws"]']
        other = where.with_name("at-once")
        store = self.open_store(other)
        try:
            assert self.apply_all(store, lines()) == 3
        finally:
            store.close()
        assert self.stored_rows(other) == rows

    def test_a_batch_folded_from_a_stale_position_is_refused(self, where: Path) -> None:
        """Two projectors never interleave batches: the loser writes nothing, reloads and goes on."""
        one, two = self.open_store(where), self.open_store(where)
        try:
            assert self.apply_all(one, lines()[:2]) == 1  # the init line and one turn
            assert self.apply_all(two, lines()[:3]) is None
            two.reload()
            assert two.last_seq == 2 and two.state.typed == {"A": {("conv_1", "yes"): 1}}
            assert self.apply_all(two, lines()[2:3]) == 1
        finally:
            one.close()
            two.close()
        assert [row[-1] for row in self.stored_rows(where)] == [2, 3]

    def test_lines_applied_again_add_nothing(self, where: Path) -> None:
        store = self.open_store(where)
        try:
            self.apply_all(store, lines())
            result = fold(store.state, lines(), store)
            assert result.lines == 0 and result.skipped == {"duplicate_line": 7}
            assert store.apply(result, 7) == 0
        finally:
            store.close()
        assert len(self.stored_rows(where)) == 3

    def test_an_invalid_line_is_counted_once_however_often_it_is_read(self, where: Path) -> None:
        store = self.open_store(where)
        try:
            for attempt in range(3):
                result = fold(store.state, [], store)
                store.apply(result, store.last_seq, [(1, 120), (1, 120), (9, 0)])
                assert result.skipped == ({"invalid_line": 2} if attempt == 0 else {})
        finally:
            store.close()

    def test_a_failed_batch_leaves_the_previous_position_and_rows(self, where: Path) -> None:
        """A batch the store cannot write (two rows with one key) is rolled back whole."""
        store = self.open_store(where)
        try:
            self.apply_all(store, lines()[:2])
            before = self.stored_rows(where)
            result = fold(store.state, lines()[2:4], store)
            result.rows.append(result.rows[-1]._replace(id=result.rows[-1].id + 1))
            with pytest.raises(ProjectionError):
                store.apply(result, 2)
            store.reload()
            assert store.last_seq == 2 and store.state.typed == {"A": {("conv_1", "yes"): 1}}
        finally:
            store.close()
        assert self.stored_rows(where) == before and before

    def test_a_rebuild_swaps_in_a_whole_new_table(self, where: Path) -> None:
        """Readers see the old rows until the new ones replace them all; a failed fill keeps the old."""
        store = self.open_store(where)
        try:
            self.apply_all(store, lines()[:2])
        finally:
            store.close()
        old = self.stored_rows(where)
        assert len(old) == 1

        def fill(new: Store) -> None:
            assert new.last_seq == 0
            self.apply_all(new, lines())
            assert self.stored_rows(where) == old  # not swapped in yet

        self.rebuild_into(where, fill)
        rebuilt = self.stored_rows(where)
        assert len(rebuilt) == 3

        def fail(new: Store) -> None:
            self.apply_all(new, lines()[:3])
            raise CaptureError("the log cannot be read")

        with pytest.raises(CaptureError, match="cannot be read"):
            self.rebuild_into(where, fail)
        assert self.stored_rows(where) == rebuilt
        store = self.open_store(where)
        try:
            assert store.last_seq == 7
        finally:
            store.close()
