"""What the worker does when the consumer group moves partitions."""

from __future__ import annotations

import logging

import faust

from stream.kafka.batching import BatchInProgress
from stream.kafka.producer import IdempotentProducer
from stream.sinks.alert_ledger import AlertLedger
from stream.state.changelog import DeferredChangelog

log = logging.getLogger("healthscore.worker")

#: Longest a rebalance waits for the batch being applied (a batch takes tens of milliseconds).
REVOKE_WAIT_SECONDS = 10.0


def connect_rebalance_hooks(
    app: faust.App,
    in_progress: BatchInProgress,
    deferred: DeferredChangelog | None,
    producer: IdempotentProducer,
    ledger: AlertLedger,
) -> None:
    @app.on_partitions_revoked.connect
    async def write_changelog_before_handing_over(sender: faust.App, revoked: set, **kwargs: object) -> None:
        """The partitions' next owner reads their records from the changelog: they must all be
        there, those of a batch still being applied and of a commit's flush under way included."""
        if not await in_progress.ended(timeout=REVOKE_WAIT_SECONDS):
            log.warning("A batch was still being applied %s s into a rebalance; its changelog records may follow it", REVOKE_WAIT_SECONDS)
        if deferred is not None:
            await deferred.flush(producer)
        await producer.flush()

    @app.on_partitions_assigned.connect
    async def forget_published_alerts(sender: faust.App, assigned: set, **kwargs: object) -> None:
        """The alerts topic's tail is read again for the partitions now owned."""
        ledger.forget_all()
