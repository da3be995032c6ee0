"""The customer records one batch touches: decoded once, written back once.

A customer with several events in a batch is decoded from the table on its first
event and encoded (one table write, one changelog message) after the batch, not
once per event. The batch's messages are acked only after ``write_back``, and
Faust flushes the producer before it commits offsets, so a crash never commits an
offset whose state change is not in the changelog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from scoring.pipeline import Step
from scoring.state import CustomerState, Outcome, decode_state, encode_state, new_state
from stream.outputs import Outputs

#: A pure step on the record; None when it left the record as it was.
Action = Callable[[CustomerState], Step | None]


@dataclass
class _Record:
    partition: int
    stored: bytes | None
    state: CustomerState
    actions: list[Action] = field(default_factory=list)
    dirty: bool = False


class WorkingSet:
    """Decoded records of the current batch, keyed by the table key."""

    def __init__(self, table: Any, keys_by_partition: dict[int, set[bytes]]) -> None:
        self._table = table
        self._keys_by_partition = keys_by_partition
        self._records: dict[bytes, _Record] = {}

    def run(self, key: bytes, partition: int, customer_id: str, action: Action) -> Step | None:
        """Runs ``action`` (a pure step) on the customer's record.

        If it raises, the record is rebuilt as it was before the action (from the
        stored bytes and the batch's earlier actions), so a failed event leaves no
        half-applied change behind.
        """
        record = self._records.get(key)
        if record is None:
            stored = self._table.get(key)
            state = decode_state(stored) if stored is not None else new_state(customer_id)
            record = self._records[key] = _Record(partition, stored, state)
        try:
            result = action(record.state)
        except BaseException:
            record.state = decode_state(record.stored) if record.stored is not None else new_state(customer_id)
            for earlier in record.actions:
                earlier(record.state)
            raise
        record.actions.append(action)
        if result is not None and result.outcome is Outcome.APPLIED:
            record.dirty = True
        return result

    def write_back(self, outputs: Outputs, changelog_topic: str) -> int:
        """One table write, and one changelog record to the key's partition, per changed record."""
        table = self._table
        written = 0
        for key, record in self._records.items():
            if not record.dirty:
                continue
            encoded = encode_state(record.state)
            # What Table.__setitem__ does (it needs Faust's current event; a batch has none):
            # the changelog record goes to the source partition, as Faust would send it.
            outputs.add(changelog_topic, record.partition, key, encoded)
            table.data[key] = encoded
            self._keys_by_partition.setdefault(record.partition, set()).add(key)
            written += 1
        self._records.clear()
        return written
