"""The customer records one batch touches: decoded once, written back once while in use.

A customer with several events close together in a batch is decoded from the table
on its first event and encoded (one table write, one changelog message) once, not
once per event. Only the most recently used records stay decoded: the others are
written back as soon as more than ``DECODED_RECORDS`` are open, while their objects
are still in the CPU cache. Keeping a whole 2,000-event batch decoded until its end
(about 10 MB of objects) cost a quarter more per event than writing records back
in small groups (measured with the bench mix, no broker). The changelog records go
to the batch's outputs; the agent sends them with the batch, or leaves their keys to
be written at the next offset commit (stream/state/changelog.py). The batch's messages are
acked only after ``write_back``, and the changelog is written and the producer flushed
before offsets are committed, so a crash never commits an offset whose state change
is not in the changelog.

The Rust kernel works on the stored bytes instead (``run_native``): its new record goes
into the table at once and its changelog record is added at ``write_back``, with the
newest value of each key whichever path changed it last.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TypeVar

from scoring.pipeline import Step
import msgspec

from scoring.state import CustomerState, Outcome, decode_record, encode_record, new_state
from stream import metrics
from stream.kafka.producer import Outputs
from stream.state.keys import KeysByPartition
from stream.state.store import records_of

log = logging.getLogger("healthscore.worker")

#: A pure step on the record; None when it left the record as it was.
Action = Callable[[CustomerState], Step | None]

#: Records kept decoded at once; the least recently used beyond this are written back.
DECODED_RECORDS = 64

Result = TypeVar("Result")
#: A pure step on the stored bytes (None: no record yet): the new bytes, or None when
#: unchanged, and what the caller wants back.
NativeAction = Callable[[bytes | None], tuple[bytes | None, Result]]


@dataclass(slots=True)
class _Record:
    partition: int
    stored: bytes | None
    state: CustomerState
    unknown: tuple[bytes, ...] = ()  # a newer layout's fields, written back as they were
    actions: list[Action] = field(default_factory=list)
    #: The input record (or sweep tick) of each action, to name the one a failed write-back parks.
    sources: list[Any] = field(default_factory=list)
    dirty: bool = False


def read_record(stored: bytes | None, customer_id: str, partition: int, met_at: Any = None) -> tuple[CustomerState, tuple[bytes, ...]]:
    """The stored record, or a new one: for a customer without one, or whose record cannot be
    decoded (reported with its partition and the input record that met it, never its content;
    the customer is rebuilt from its next events rather than every event refused)."""
    if stored is None:
        return new_state(customer_id), ()
    try:
        return decode_record(stored)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
        metrics.STATE_RECORDS_UNREADABLE.inc()
        where = f", met by {met_at.topic}[{met_at.partition}]@{met_at.offset}" if met_at is not None else ", met by a sweep"
        log.warning(
            "A customer record on partition %s cannot be decoded (%s%s): it is rebuilt from the customer's next events",
            partition, error, where,
        )
        return new_state(customer_id), ()


class WorkingSet:
    """Decoded records of the current batch, keyed by the table key, least recently used first."""

    def __init__(
        self,
        table: Any,
        keys_by_partition: KeysByPartition,
        outputs: Outputs,
        changelog_topic: str,
        capacity: int = DECODED_RECORDS,
    ) -> None:
        self._store = records_of(table)
        self._keys_by_partition = keys_by_partition
        self._outputs = outputs
        self._changelog_topic = changelog_topic
        self._capacity = capacity
        self._records: OrderedDict[bytes, _Record] = OrderedDict()
        self._changed_natively: dict[bytes, int] = {}  # key -> partition
        #: (input record, error) of each action left out of a record that could not be encoded
        #: with it: the caller dead-letters them (``processing_error``).
        self.failed: list[tuple[Any, BaseException]] = []

    def read_ahead(self, keys: Iterable[tuple[bytes, int]]) -> None:
        """The records of the batch's customers, (key, partition), fetched together before its
        events are applied (the RocksDB store: one MultiGet per partition; forgotten at
        ``write_back``)."""
        self._store.read_ahead(keys)

    def knows(self, key: bytes, partition: int) -> bool:
        """Whether the customer has a record on this worker (open in this batch or stored)."""
        return key in self._records or key in self._store.partition(partition)

    def run(self, key: bytes, partition: int, customer_id: str, action: Action, met_at: Any = None) -> Step | None:
        """Runs ``action`` (a pure step) on the customer's record.

        If it raises, the record is rebuilt as it was before the action (from the
        stored bytes and the batch's earlier actions), so a failed event leaves no
        half-applied change behind.
        """
        record = self._records.get(key)
        if record is None:
            if len(self._records) >= self._capacity:
                self._write(*self._records.popitem(last=False))
            # The store itself, as for writes: Faust's Table.get adds only its sensor hook
            # (the worker has no sensors), at 1 us per call against 0.2 us.
            stored = self._store.partition(partition).get(key)
            state, unknown = read_record(stored, customer_id, partition, met_at)
            record = self._records[key] = _Record(partition, stored, state, unknown)
        else:
            self._records.move_to_end(key)
        try:
            result = action(record.state)
        except BaseException:
            record.state = read_record(record.stored, customer_id, record.partition)[0]
            for earlier in record.actions:
                earlier(record.state)
            raise
        record.actions.append(action)
        record.sources.append(met_at)
        if result is not None and result.outcome is Outcome.APPLIED:
            record.dirty = True
        return result

    def run_native(self, key: bytes, partition: int, action: NativeAction[Result]) -> Result:
        """Runs ``action`` on the customer's stored bytes; a raising action changes nothing."""
        open_record = self._records.pop(key, None)
        if open_record is not None:  # decoded by an earlier step of this batch: store it first
            self._write(key, open_record)
        data = self._store.partition(partition)
        before = data.get(key)
        record, result = action(before)
        if record is not None:
            data[key] = record
            self._changed_natively[key] = partition
            self._keys_by_partition.written(partition, key, before)
        return result

    def erase(self, key: bytes, partition: int) -> bool:
        """Forgets the customer's record, open or stored, and queues its changelog tombstone;
        returns whether there was one. Its events later in the batch start a new record."""
        had = self._records.pop(key, None) is not None
        self._changed_natively.pop(key, None)
        before = self._store.partition(partition).pop(key, None)
        had = before is not None or had
        self._keys_by_partition.erased(partition, key, before)
        self._outputs.add(self._changelog_topic, partition, key, None)
        return had

    def write_back(self) -> int:
        """Writes every changed record still open; returns how many were written by this call."""
        written = 0
        for key, record in self._records.items():
            written += self._write(key, record)
        self._records.clear()
        store = self._store
        for key, partition in self._changed_natively.items():
            self._outputs.add(self._changelog_topic, partition, key, store.partition(partition)[key])
            written += 1
        self._changed_natively.clear()
        store.forget_read_ahead()
        return written

    def _write(self, key: bytes, record: _Record) -> int:
        """One table write, and one changelog record to the key's partition, if the record changed."""
        if not record.dirty:
            return 0
        try:
            encoded = encode_record(record.state, record.unknown)
        except Exception as error:  # never half-written: the record without the actions that broke it
            encoded = self._without_failed_actions(record, error)
            if encoded is None:
                return 0
        # What Table.__setitem__ does (it needs Faust's current event; a batch has none):
        # the changelog record goes to the source partition, as Faust would send it.
        self._outputs.add(self._changelog_topic, record.partition, key, encoded)
        data = self._store.partition(record.partition)
        before = data.get(key)
        data[key] = encoded
        self._keys_by_partition.written(record.partition, key, before)
        return 1

    def _without_failed_actions(self, record: _Record, error: BaseException) -> bytes | None:
        """The record rebuilt from its stored bytes with each of the batch's actions that still
        leaves it encodable; the others go to ``failed``. None when none of them applied.
        Only reached when encoding failed (a bug: the contract's bounds should prevent it)."""
        log.error("A customer record on partition %s could not be encoded (%s: %s): its actions are tried one by one",
                  record.partition, type(error).__name__, error)
        state = read_record(record.stored, record.state.customer_id, record.partition)[0]
        encoded: bytes | None = None
        kept: list[Action] = []
        for action, source in zip(record.actions, record.sources):
            try:
                result = action(state)
                candidate = encode_record(state, record.unknown)
            except Exception as failure:
                self.failed.append((source, failure))
                state = read_record(record.stored, record.state.customer_id, record.partition)[0]
                for earlier in kept:
                    earlier(state)
                continue
            kept.append(action)
            if result is not None and result.outcome is Outcome.APPLIED:
                encoded = candidate
        if encoded is not None:
            record.state = state
        return encoded
