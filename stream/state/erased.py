"""The deny-list of erased customers, kept in each process from the audit topic.

The audit topic (``healthscore-erasures``, compacted, kept for ever) holds the latest
audit record of each erased customer under its keyed hash. A worker reads it whole before
it applies any event, again whenever it is assigned partitions (another worker may have
erased their customers), and notes its own erasures at once; ``healthscore deliver`` reads
what was added before each alert. While the topic cannot be read, events (and alerts)
wait: an erased customer is never let back for lack of the list.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from aiokafka.structs import ConsumerRecord

from scoring.privacy import ErasedCustomers, ErasureRecord
from stream.kafka.reading import TopicFollower
from stream.settings import Settings

log = logging.getLogger("healthscore.worker")

_records = msgspec.json.Decoder(ErasureRecord)


async def erasures_without_key(settings: Settings) -> int:
    """How many customers were erased, when privacy.hash_key is not set (0 when it is): a
    process cannot recognise them without it, and must not start."""
    if settings.privacy.hash_key is not None:
        return 0
    erased = ErasedCustomers(b"")
    follower = ErasedCustomersFollower(settings, erased)
    try:
        await follower.catch_up()
    finally:
        await follower.stop()
    return len(erased)


def deny_list(settings: Settings) -> ErasedCustomers:
    """An empty deny-list keyed with privacy.hash_key (or the public default, which matches nothing
    `healthscore erase` wrote: it refuses to run without the key)."""
    key = settings.privacy.hash_key.get_secret_value().encode() if settings.privacy.hash_key else b""
    return ErasedCustomers(key, int(settings.privacy.erasure_quarantine_days * 86_400_000))


class ErasedCustomersFollower:
    """Fills an :class:`ErasedCustomers` from the audit topic and keeps it current."""

    retry_seconds = 0.5
    longest_retry_seconds = 30.0

    def __init__(self, settings: Settings, erased: ErasedCustomers) -> None:
        self.erased = erased
        self._has_key = settings.privacy.hash_key is not None
        self._follower = TopicFollower(settings.kafka, settings.topics.erasures, self._note)
        self.stale = True  # read before the first event
        self._logged_count = -1

    def _note(self, record: ConsumerRecord) -> None:
        if record.key is None:
            return
        if record.value is None:
            self.erased.forget(record.key.decode())
            return
        try:
            self.erased.note(_records.decode(record.value))
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
            log.error("An audit record on %s[%s]@%s cannot be read (%s): skipped", record.topic, record.partition, record.offset, error)

    async def catch_up(self) -> None:
        """Reads what was added to the audit topic since the last read (once, no retry)."""
        await self._follower.catch_up()

    async def refresh(self) -> None:
        """:meth:`ready`, whether or not the list is stale (an erasure a moment ago counts)."""
        self.stale = True
        await self.ready()

    async def ready(self) -> None:
        """Reads what was added to the audit topic when the list is stale; waits (retrying,
        logged once) while the topic cannot be read, rather than apply events without it."""
        if not self.stale:
            return
        pause, waiting = self.retry_seconds, False
        while True:
            try:
                await self.catch_up()
                break
            except Exception as error:  # Kafka away, a topic being created: wait, never skip
                if not waiting:
                    waiting = True
                    log.warning("Events wait for the list of erased customers (%s: %s); retrying", type(error).__name__, error)
                await self._follower.stop()
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.longest_retry_seconds)
        if len(self.erased) and not self._has_key:
            raise RuntimeError(
                f"{len(self.erased)} customer(s) were erased but privacy.hash_key is not set: the worker cannot recognise "
                "them; set HEALTHSCORE_PRIVACY__HASH_KEY to the key `healthscore erase` used"
            )
        self.stale = False
        if len(self.erased) != self._logged_count:
            self._logged_count = len(self.erased)
            log.info("%s erased customer(s) on the deny-list", self._logged_count)

    async def stop(self) -> None:
        await self._follower.stop()
