"""How ``capture sql`` writes a result: a table that fits the terminal, CSV and JSON with proper types.

DuckDB's values become what a reader of each format expects: timestamps in
ISO 8601 (UTC as ``Z``), durations in seconds, lists and structs as JSON
(arrays and objects), ``JSON`` columns as the JSON they hold, NULL as an
empty CSV field or ``null``. The table and CSV show the same text.

"""

from __future__ import annotations

import base64
import csv
import enum
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from itertools import islice
from typing import Any, TextIO

import orjson
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from cli.output import console, show
from projections.duckdb_views import QueryResult


__all__ = ["OutputFormat", "print_table", "write_csv", "write_json"]

_JSON_TYPE = "JSON"
_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS
# Words up to this long are kept whole in a table (a conversation id is 29).
_LONGEST_KEPT = 40


class OutputFormat(enum.StrEnum):
    """How ``capture sql`` writes a result."""

    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    PARQUET = "parquet"


def _timestamp(value: datetime) -> str:
    text = value.isoformat()
    offset = value.utcoffset()
    if offset is not None and not offset:
        return text[: -len("+00:00")] + "Z"
    return text


def _plain(value: Any) -> Any:
    """``value`` as JSON sees it: str, int, float, bool, None, lists, dicts (Decimals kept exact)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, datetime):
        return _timestamp(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value)


def _json_value(value: Any, is_json: bool) -> Any:
    if value is None:
        return None
    if is_json:
        return orjson.Fragment(value)  # DuckDB checked it is JSON
    return _plain(value)


def _text(value: Any, is_json: bool) -> str | None:
    """The text of a cell (CSV and table); ``None`` for NULL."""
    if value is None:
        return None
    if is_json or isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return str(value)
    plain = _plain(value)
    if isinstance(plain, str):
        return plain
    if isinstance(plain, int | float):
        return repr(plain)
    return orjson.dumps(plain, option=_JSON_OPTIONS).decode()


def _json_columns(result: QueryResult) -> list[bool]:
    return [kind == _JSON_TYPE for kind in result.types]


def _text_rows(result: QueryResult) -> Iterator[list[str | None]]:
    is_json = _json_columns(result)
    for row in result.rows:
        yield [_text(value, flag) for value, flag in zip(row, is_json, strict=True)]


def write_csv(result: QueryResult, out: TextIO) -> int:
    """Write ``result`` as CSV with a header line (NULL is an empty field); return the rows written."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(result.columns)
    count = 0
    for row in _text_rows(result):
        writer.writerow(["" if cell is None else cell for cell in row])
        count += 1
    return count


def write_json(result: QueryResult, out: TextIO) -> int:
    """Write ``result`` as a JSON array of objects, one row per line; return the rows written."""
    is_json = _json_columns(result)
    out.write("[")
    count = 0
    for row in result.rows:
        record = {
            name: _json_value(value, flag)
            for name, value, flag in zip(result.columns, row, is_json, strict=True)
        }
        out.write(("," if count else "") + "\n" + orjson.dumps(record, option=_JSON_OPTIONS).decode())
        count += 1
    out.write("\n]\n")
    return count


def _cell(text: str | None) -> Text:
    # Text, not str: a value is never read as rich markup, and control
    # characters in it are dropped rather than sent to the terminal.
    return Text("NULL", style="dim") if text is None else Text(text)


def _longest_word(texts: Iterable[str | None]) -> int:
    return max((len(word) for text in texts if text for word in text.split()), default=0)


def _table(columns: Sequence[str], rows: Sequence[Sequence[str | None]]) -> tuple[Table, int]:
    """The table, and the narrowest it can be without breaking a word of up to ``_LONGEST_KEPT``."""
    table = Table(show_lines=False)
    narrowest = len(columns) + 1  # the borders
    for index, name in enumerate(columns):
        cells = [row[index] for row in rows]
        longest = _longest_word([name, *cells])
        # A column of single words (ids, timestamps, numbers) is kept whole,
        # so that the columns that can wrap between words give way first.
        whole = longest <= _LONGEST_KEPT and not any(text and len(text.split()) > 1 for text in cells)
        table.add_column(Text(name, style="bold"), overflow="fold", no_wrap=whole)
        narrowest += min(longest, _LONGEST_KEPT) + 2  # the padding
    for row in rows:
        table.add_row(*(_cell(text) for text in row))
    return table, narrowest


def _print_vertical(columns: Sequence[str], rows: Sequence[Sequence[str | None]]) -> None:
    for number, row in enumerate(rows, start=1):
        console.print(Rule(f"row {number}", align="left", style="dim"))
        record = Table.grid(padding=(0, 2))
        record.add_column(style="bold", no_wrap=True)
        record.add_column(overflow="fold")
        for name, text in zip(columns, row, strict=True):
            record.add_row(name, _cell(text))
        console.print(record)


def print_table(result: QueryResult, max_rows: int) -> tuple[int, bool]:
    """Print at most ``max_rows`` rows of ``result`` on stdout, for a person to read.

    On a terminal the table fits its width: long values wrap or fold (never
    cut short), and when the columns cannot fit side by side each row is
    printed as a list of ``column  value`` lines. Anywhere else (a file, a
    pipe) the table is written at its full width.

    Returns:
        How many rows were printed, and whether there were more.

    """
    fetched = list(islice(_text_rows(result), max_rows + 1))
    rows, more = fetched[:max_rows], len(fetched) > max_rows
    table, narrowest = _table(result.columns, rows)
    if console.is_terminal and len(result.columns) > 1 and narrowest > console.width:
        _print_vertical(result.columns, rows)
    else:
        show(table)
    return len(rows), more
