"""What a projection store is to the runner: the interface every backend implements.

A store holds the table the fold (:func:`projections.rule.fold`) produces, the
fold's state and the position (the seq of the last applied line, with its
:class:`~projections.reader.Anchor`: what identifies that line), and stores
each folded batch with its position in one transaction. One module per backend
implements it: :mod:`projections.sqlite` today (a PostgreSQL store would be
another). ``tests/projections/store_contract.py`` holds the tests every store
must pass.

"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ingest.errors import ProjectionError
from projections.reader import Anchor, Position
from projections.rule import FoldResult, FoldState, TableView


__all__ = ["Store"]


class Store(TableView, Protocol):
    """An open store, the fold's :class:`~projections.rule.TableView`; not thread-safe.

    Attributes:
        state: The fold's state as stored (:meth:`reload` re-reads it); the
            runner folds each batch into it in place.

    """

    state: FoldState

    @property
    def last_seq(self) -> int:
        """The position: the seq of the last applied line (0 before the first)."""
        ...

    @property
    def anchor(self) -> Anchor | None:
        """What identifies the line at :attr:`last_seq`, as stored with it (``None`` before the first)."""
        ...

    def apply(
        self,
        result: FoldResult,
        from_seq: int,
        invalid: Sequence[Position] = (),
        anchor: Anchor | None = None,
    ) -> int | None:
        """Store one folded batch, the fold's state and the new position in one transaction.

        Args:
            result: What :func:`~projections.rule.fold` returned for the batch,
                folded against this store at ``from_seq``; its ``skipped``
                counts are completed with ``invalid_line``.
            from_seq: The position the batch was folded from.
            invalid: Where the invalid lines read with the batch are; each is
                counted once, however often it is read.
            anchor: What identifies the line at ``result.last_seq``, stored
                with the position; without one, the stored anchor is cleared
                if the position moves.

        Returns:
            How many rows the table gained, or ``None`` if nothing was written
            because the stored position is no longer ``from_seq`` (another
            projector moved it, or the store was replaced): :meth:`reload` and
            read again from :attr:`last_seq`.

        Raises:
            ProjectionError: the store cannot be written.

        """
        ...

    def reload(self) -> None:
        """Re-read the position and the fold's state (from a replaced store if it was)."""
        ...

    def is_busy(self, error: ProjectionError) -> bool:
        """Whether ``error`` (from :meth:`apply`) only means another writer held the store too long."""
        ...

    def close(self) -> None:
        """Close the store (idempotent)."""
        ...
