"""Where a raw input record sits in event time, for the merge of the co-partitioned inputs
(stream/kafka/event_time.py), read before the record is validated.

It reads only ``occurred_at`` and ``event_id`` (under a microsecond per record); a record
without a readable time sorts first and is refused by validation as it would be anyway.
A sweep tick sits at the time it sweeps at.
"""

from __future__ import annotations

from datetime import datetime
from typing import Callable, Union

import msgspec
from aiokafka.structs import ConsumerRecord

from stream.kafka.event_time import UNKNOWN_TIME, EventTimeKey


class _Stamp(msgspec.Struct):
    occurred_at: Union[int, str] = -1
    event_id: str = ""


class _TickStamp(msgspec.Struct):
    at_ms: int = -1


_stamps = msgspec.json.Decoder(_Stamp)
_tick_stamps = msgspec.json.Decoder(_TickStamp)
_parse = datetime.fromisoformat


def event_time_key(ticks_topic: str) -> Callable[[ConsumerRecord], EventTimeKey]:
    """The key of an input record (``occurred_at`` in epoch ms, ``event_id``) or of a sweep tick."""

    def key(record: ConsumerRecord) -> EventTimeKey:
        value = record.value
        if value is None:
            return UNKNOWN_TIME
        try:
            if record.topic == ticks_topic:
                return (_tick_stamps.decode(value).at_ms, "")
            stamp = _stamps.decode(value)
            occurred_at = stamp.occurred_at
            if type(occurred_at) is str:
                parsed = _parse(occurred_at)
                if parsed.tzinfo is None:
                    return UNKNOWN_TIME
                occurred_at = int(parsed.timestamp() * 1000)  # as scoring.contract.parse_timestamp_ms
            return (occurred_at, stamp.event_id) if type(occurred_at) is int else UNKNOWN_TIME
        except (msgspec.DecodeError, ValueError, TypeError, OverflowError):
            return UNKNOWN_TIME

    return key
