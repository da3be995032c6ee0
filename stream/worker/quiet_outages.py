"""Kafka client errors during an outage: said once, then summarised, not once per attempt.

While a broker is away, aiokafka logs each failed connection, metadata refresh and fetch
at ERROR, several times a second: 4,235 WARNING/ERROR lines in a 25-second outage
(tests/integration/test_fault_agreement.py). The first record of each kind (logger and
message template) goes through; later ones of that kind are counted, and one goes
through per ``interval`` with the count of those held back since. A kind quiet for an
interval starts afresh, so the next outage is said again at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

#: The loggers whose records are summarised: the Kafka client's.
CLIENT_LOGGERS = ("aiokafka",)


@dataclass
class _Kind:
    last_passed: float
    last_seen: float
    held_back: int = 0


class OutageLogFilter(logging.Filter):
    def __init__(self, interval: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._kinds: dict[tuple[str, str], _Kind] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = self._clock()
        key = (record.name, str(record.msg))
        kind = self._kinds.get(key)
        if kind is None or now - kind.last_seen >= self._interval:
            self._kinds[key] = _Kind(now, now)
            return True
        kind.last_seen = now
        if now - kind.last_passed < self._interval:
            kind.held_back += 1
            return False
        if kind.held_back:
            record.msg = f"{record.msg} (and {kind.held_back} more like it in the last {now - kind.last_passed:.0f} s)"
        kind.last_passed, kind.held_back = now, 0
        return True


def quiet_kafka_client_outages(interval: float = 30.0) -> OutageLogFilter:
    """Installs one filter on every Kafka client logger (they are module loggers, created at import)."""
    import aiokafka  # noqa: F401  (its modules create their loggers on import)
    import aiokafka.consumer.fetcher  # noqa: F401
    import aiokafka.consumer.group_coordinator  # noqa: F401
    import aiokafka.producer.sender  # noqa: F401

    quiet = OutageLogFilter(interval)
    names = [name for name in logging.root.manager.loggerDict if name.split(".")[0] in CLIENT_LOGGERS]
    for name in names:
        logging.getLogger(name).addFilter(quiet)
    return quiet
