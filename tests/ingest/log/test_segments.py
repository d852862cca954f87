"""Tests of ingest.log.segments: segment names, their order and the rotation policy."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, strategies as st

from ingest.log.segments import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_BYTES,
    RotationPolicy,
    first_seq_of,
    list_segments,
    segment_name,
)


SEQS = st.integers(min_value=0, max_value=10**20 - 1)


def test_segment_name_is_zero_padded() -> None:
    """A segment is named after its first seq, zero-padded to 20 digits."""
    assert segment_name(1) == "00000000000000000001.jsonl"
    assert segment_name(1234567) == "0000000000000" + "1234567.jsonl"
    assert len(segment_name(2**63 - 1)) == len("00000000000000000000.jsonl")


def test_names_sort_in_log_order() -> None:
    """Sorting names as strings gives the order of their first seqs."""
    seqs = [1, 2, 9, 10, 11, 99, 100, 1000, 123456789, 2**40, 2**63 - 1]
    names = [segment_name(s) for s in seqs]
    assert sorted(names[1::2] + names[0::2]) == names


@given(SEQS, SEQS)
def test_names_sort_like_seqs_property(a: int, b: int) -> None:
    """For any two seqs, their names compare like the seqs do."""
    assert (segment_name(a) < segment_name(b)) == (a < b)
    assert first_seq_of(Path(segment_name(a))) == a


def test_first_seq_of_plain_and_compressed() -> None:
    """Plain, .gz and .zst segments announce their first seq."""
    assert first_seq_of(Path("00000000000000000042.jsonl")) == 42
    assert first_seq_of(Path("/x/y/00000000000000000042.jsonl.gz")) == 42
    assert first_seq_of(Path("00000000000000000042.jsonl.zst")) == 42


def test_first_seq_of_ignores_sidecars_and_others() -> None:
    """Sidecars, temp files, the lock and misnamed files are not segments."""
    for name in (
        "00000000000000000042.jsonl.torn-20261125T120000Z",
        "00000000000000000042.jsonl.torn-20261125T120000Z-1",
        "00000000000000000042.jsonl.gz.tmp",
        "00000000000000000042.jsonl.bz2",
        "00000000000000000042.json",
        "0000000000000000042.jsonl",
        "000000000000000000042.jsonl",
        "x0000000000000000042.jsonl",
        "capture.lock",
        ".00000000000000000042.jsonl",
    ):
        assert first_seq_of(Path(name)) is None, name


def test_list_segments_orders_and_filters(tmp_path: Path) -> None:
    """list_segments returns only segments, in log order."""
    for name in (
        segment_name(100),
        segment_name(1) + ".gz",
        segment_name(9) + ".zst",
        segment_name(100) + ".torn-20261125T120000Z",
        "capture.lock",
        "notes.txt",
    ):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / (segment_name(50) + ".d")).mkdir()
    assert [p.name for p in list_segments(tmp_path)] == [
        segment_name(1) + ".gz",
        segment_name(9) + ".zst",
        segment_name(100),
    ]


def test_list_segments_of_missing_dir(tmp_path: Path) -> None:
    """A missing events folder has no segments."""
    assert list_segments(tmp_path / "nope") == []


def test_rotation_defaults() -> None:
    """The defaults are 64 MiB and one hour."""
    policy = RotationPolicy()
    assert policy.max_bytes == DEFAULT_MAX_BYTES == 64 * 1024 * 1024
    assert policy.max_age == DEFAULT_MAX_AGE == 3600.0


def test_rotation_never_rolls_empty_segment() -> None:
    """An empty segment is never rolled, however old."""
    policy = RotationPolicy(max_bytes=10, max_age=1.0)
    assert not policy.should_rotate(0, 0.0)
    assert not policy.should_rotate(0, 10**9)


def test_rotation_by_size() -> None:
    """A segment rolls once it holds at least max_bytes."""
    policy = RotationPolicy(max_bytes=100, max_age=3600.0)
    assert not policy.should_rotate(1, 0.0)
    assert not policy.should_rotate(99, 10.0)
    assert policy.should_rotate(100, 0.0)
    assert policy.should_rotate(10_000, 0.0)


def test_rotation_by_age() -> None:
    """A non-empty segment rolls once it is at least max_age old."""
    policy = RotationPolicy(max_bytes=10**9, max_age=60.0)
    assert not policy.should_rotate(1, 59.999)
    assert policy.should_rotate(1, 60.0)
    assert policy.should_rotate(1, 3600.0)
