"""Where a raw input record sits in event time, for the merge of the co-partitioned inputs
(stream/kafka/event_time.py), read before the record is validated.

It reads only ``occurred_at`` and ``event_id`` (under a microsecond per record); a record
without a readable time sorts first and is refused by validation as it would be anyway.
So does a time beyond ``max_future_skew_seconds`` ahead of the clock: validation refuses
such an event, and taken as the partition's position it would hold the partition back and
then count every later record as out of order. A sweep tick sits at the time it sweeps at.
"""

from __future__ import annotations

import time
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


def event_time_key(
    ticks_topic: str, max_future_skew_ms: int, clock: Callable[[], float] = time.time
) -> Callable[[ConsumerRecord], EventTimeKey]:
    """The key of an input record (``occurred_at`` in epoch ms, ``event_id``) or of a sweep tick;
    UNKNOWN_TIME for a time beyond ``max_future_skew_ms`` ahead of ``clock``."""

    def key(record: ConsumerRecord) -> EventTimeKey:
        value = record.value
        if value is None:
            return UNKNOWN_TIME
        try:
            if record.topic == ticks_topic:
                at_ms = _tick_stamps.decode(value).at_ms
                return (at_ms, "") if at_ms <= clock() * 1000 + max_future_skew_ms else UNKNOWN_TIME
            stamp = _stamps.decode(value)
            occurred_at = stamp.occurred_at
            if type(occurred_at) is str:
                parsed = _parse(occurred_at)
                if parsed.tzinfo is None:
                    return UNKNOWN_TIME
                occurred_at = int(parsed.timestamp() * 1000)  # as scoring.contract.parse_timestamp_ms
            if type(occurred_at) is not int or occurred_at > clock() * 1000 + max_future_skew_ms:
                return UNKNOWN_TIME
            return (occurred_at, stamp.event_id)
        except (msgspec.DecodeError, ValueError, TypeError, OverflowError):
            return UNKNOWN_TIME

    return key
