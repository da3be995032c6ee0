"""The sweep walks each partition's customers once, in key order, a chunk per tick, sorting
the keys once per sweep (not once per chunk), skipping customers erased meanwhile."""

from __future__ import annotations

from scoring.alerts import AlertParameters
from scoring.health import ScoringParameters
from stream.processing.sweep import MAX_SWEEPS_IN_PROGRESS, Sweeper
from stream.settings import load_settings
from stream.state.keys import KeysByPartition


def sweeper(keys: dict[int, set[bytes]], chunk_size: int) -> Sweeper:
    """A sweeper that visits every customer (the order and chunking are what is tested here;
    which customers the due index visits is tests/stream/test_sweep_due.py's)."""
    settings = load_settings(sweep_chunk_size=chunk_size, sweep_due_index=False)
    index = KeysByPartition()
    index.update(keys)  # the same sets: the tests change them
    return Sweeper(settings, ScoringParameters(), AlertParameters(), index, publisher=None, sweep_topic=None, clock=lambda: 0.0)  # type: ignore[arg-type]


def walk(sweep: Sweeper, partition: int, at_ms: int) -> list[list[bytes]]:
    chunks, after = [], b""
    while True:
        chunk, after = sweep._chunk(partition, at_ms, after)
        chunks.append(chunk)
        if after is None:
            return chunks


def test_every_key_once_in_order_a_chunk_per_tick() -> None:
    keys = {0: {f"c{index:05d}".encode() for index in range(1234)}, 1: {b"z"}}
    chunks = walk(sweeper(keys, 500), 0, 1_000)
    assert [len(chunk) for chunk in chunks] == [500, 500, 234]
    assert [key for chunk in chunks for key in chunk] == sorted(keys[0])


def test_a_customer_erased_during_the_sweep_is_skipped_and_one_added_waits_for_the_next() -> None:
    keys = {0: {f"c{index:03d}".encode() for index in range(10)}}
    sweep = sweeper(keys, 4)
    first, after = sweep._chunk(0, 1_000, b"")
    assert first == [b"c000", b"c001", b"c002", b"c003"]
    keys[0].discard(b"c005")  # erased meanwhile
    keys[0].add(b"c0045")  # a new customer: active now, not due; the next sweep has it
    second, after = sweep._chunk(0, 1_000, after)
    assert second == [b"c004", b"c006", b"c007"] and after == b"c007"
    third, after = sweep._chunk(0, 1_000, after)
    assert third == [b"c008", b"c009"] and after is None
    assert [key for chunk in walk(sweep, 0, 2_000) for key in chunk] == sorted(keys[0])


def test_a_tick_after_a_restart_continues_after_its_key() -> None:
    keys = {0: {f"c{index:02d}".encode() for index in range(30)}}
    fresh = sweeper(keys, 10)  # this worker never saw the sweep's first tick
    chunk, after = fresh._chunk(0, 5, b"c14")
    assert chunk == [f"c{index:02d}".encode() for index in range(15, 25)] and after == b"c24"


def test_sweeps_in_progress_are_bounded() -> None:
    keys = {partition: {b"a", b"b", b"c"} for partition in range(MAX_SWEEPS_IN_PROGRESS + 10)}
    sweep = sweeper(keys, 1)
    for partition in keys:
        sweep._chunk(partition, 7, b"")
    assert len(sweep._orders) == MAX_SWEEPS_IN_PROGRESS


def test_a_tick_with_an_unknown_phase_is_not_a_sweep_tick() -> None:
    import msgspec
    import pytest

    from stream.processing.sweep import SweepTick

    assert msgspec.json.decode(b'{"at_ms": 1, "started_at": 0, "after": "ab", "phase": "due"}', type=SweepTick).phase == "due"
    for phase in (b'"later"', b'""', b"7"):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(b'{"at_ms": 1, "started_at": 0, "phase": %s}' % phase, type=SweepTick)
