"""The topics the worker reads and writes, declared once on its Faust app."""

from __future__ import annotations

from dataclasses import dataclass

import faust

from scoring.contract import TopicKind
from stream.kafka.batching import BatchingTopic
from stream.processing.event_time import event_time_key
from stream.settings import Settings, TopicNames


def raw_schema() -> faust.Schema:
    """A new raw-bytes schema per topic: Faust mutates a schema shared between channels.
    Values travel as raw bytes: Faust never decodes them (it would ack undecodable messages silently)."""
    return faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


@dataclass(frozen=True)
class WorkerTopics:
    """Handles on every topic of the worker but the changelog (the table owns that one)."""

    source: BatchingTopic  # the four inputs and the sweep-tick topic, read as one stream of batches
    input_kinds: dict[str, TopicKind]  # input topic name -> the kind of events it carries
    inputs: dict[str, faust.TopicT]  # for sending a keyless event back keyed
    sweep: faust.TopicT
    health: str
    alerts: str
    erasures: str  # the audit trail of erasures
    dead_letters: dict[str, faust.TopicT]  # consumed topic name -> its dead-letter topic

    @classmethod
    def declare(cls, app: faust.App, settings: Settings) -> WorkerTopics:
        partitions = settings.partitions
        input_kinds = settings.topics.inputs()
        sweep_name = settings.topics.sweep

        def topic(name: str) -> faust.TopicT:
            return app.topic(name, partitions=partitions, schema=raw_schema())

        source = BatchingTopic(
            app,
            topics=[*input_kinds, sweep_name],
            partitions=partitions,
            schema=raw_schema(),
            batch_limit=settings.batch_max_events,
            event_time=event_time_key(sweep_name, settings.max_future_skew_seconds * 1000),
            ticks=sweep_name,
            max_wait=settings.max_task_idle_seconds,
        )
        return cls(
            source=source,
            input_kinds=input_kinds,
            inputs={name: topic(name) for name in input_kinds},
            sweep=topic(sweep_name),
            health=topic(settings.topics.health).get_topic_name(),
            alerts=topic(settings.topics.alerts).get_topic_name(),
            erasures=topic(settings.topics.erasures).get_topic_name(),
            dead_letters={name: topic(TopicNames.dead_letter(name)) for name in [*input_kinds, sweep_name]},
        )

    @property
    def sweep_name(self) -> str:
        return self.sweep.get_topic_name()
