"""DuckDB values as the reader of each format expects them: the same text in the table and the CSV."""

from __future__ import annotations

import csv
import io

import duckdb
import orjson
import pytest

from cli.results import write_csv, write_json
from projections.duckdb_views import QueryResult, run_query


QUERY = """SELECT
    TIMESTAMPTZ '2026-01-02 03:04:05.678901+00' AS at,
    TIMESTAMP '2026-01-02 03:04:05' AS naive,
    DATE '2026-01-02' AS day,
    INTERVAL 90 SECOND + INTERVAL 500 MILLISECOND AS took,
    ['a', 'b'] AS list,
    {'k': 1, 'when': DATE '2026-01-02'} AS struct,
    MAP {1: 'x'} AS map,
    to_json({'n': [1, 2]}) AS doc,
    12.50::DECIMAL(6, 2) AS price,
    true AS yes,
    'Olá 🙏' AS text,
    NULL::VARCHAR AS nothing,
    'YWI='::BLOB AS raw"""


@pytest.fixture
def conn() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    return connection


def _result(conn: duckdb.DuckDBPyConnection) -> QueryResult:
    return run_query(conn, QUERY)


def test_csv(conn: duckdb.DuckDBPyConnection) -> None:
    out = io.StringIO()
    assert write_csv(_result(conn), out) == 1
    header, row = out.getvalue().splitlines()
    record = dict(zip(header.split(","), next(csv.reader([row])), strict=True))
    assert record == {
        "at": "2026-01-02T03:04:05.678901Z",
        "naive": "2026-01-02T03:04:05",
        "day": "2026-01-02",
        "took": "90.5",
        "list": '["a","b"]',
        "struct": '{"k":1,"when":"2026-01-02"}',
        "map": '{"1":"x"}',
        "doc": '{"n":[1,2]}',
        "price": "12.50",
        "yes": "true",
        "text": "Olá 🙏",
        "nothing": "",
        "raw": "WVdJPQ==",
    }


def test_json(conn: duckdb.DuckDBPyConnection) -> None:
    out = io.StringIO()
    write_json(_result(conn), out)
    (record,) = orjson.loads(out.getvalue())
    assert record["at"] == "2026-01-02T03:04:05.678901Z" and record["took"] == 90.5
    assert record["list"] == ["a", "b"] and record["struct"] == {"k": 1, "when": "2026-01-02"}
    assert record["doc"] == {"n": [1, 2]}  # a JSON column is embedded, not quoted
    assert record["price"] == 12.5 and '"price":12.50' in out.getvalue()  # exact
    assert record["yes"] is True and record["nothing"] is None and record["text"] == "Olá 🙏"
