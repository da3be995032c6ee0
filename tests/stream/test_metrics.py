"""The batched histogram exposes exactly what prometheus_client's Histogram would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from stream.metrics import BatchedHistogram

BUCKETS = (0.1, 0.5, 1, 2.5, 10)


def _exposition(registry: CollectorRegistry) -> list[str]:
    # prometheus_client's own histogram also exports a _created timestamp: not ours to compare.
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


@given(st.lists(st.lists(st.floats(min_value=-5, max_value=50, allow_nan=False), max_size=20), max_size=5))
def test_batched_histogram_matches_prometheus_client(batches: list[list[float]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batched = BatchedHistogram("example_seconds", "An example.", BUCKETS, ours)
    reference = Histogram("example_seconds", "An example.", buckets=BUCKETS, registry=theirs)
    for batch in batches:
        batched.observe_many(batch)
        for value in batch:
            reference.observe(value)
    ours_lines, theirs_lines = _exposition(ours), _exposition(theirs)
    assert [line for line in ours_lines if "_sum" not in line] == [line for line in theirs_lines if "_sum" not in line]
    # the sum may differ in the last bits: ours adds the batch with fsum
    ours_sum = float(next(line for line in ours_lines if line.startswith("example_seconds_sum")).split()[-1])
    theirs_sum = float(next(line for line in theirs_lines if line.startswith("example_seconds_sum")).split()[-1])
    assert abs(ours_sum - theirs_sum) <= 1e-9 * max(1.0, abs(theirs_sum))


def test_a_value_on_a_bucket_bound_counts_in_that_bucket() -> None:
    registry = CollectorRegistry()
    histogram = BatchedHistogram("bound_seconds", "Bounds.", BUCKETS, registry)
    histogram.observe_many([0.5, 0.5000001])
    assert registry.get_sample_value("bound_seconds_bucket", {"le": "0.5"}) == 1
    assert registry.get_sample_value("bound_seconds_bucket", {"le": "1.0"}) == 2
    assert registry.get_sample_value("bound_seconds_count") == 2


def test_every_metric_is_declared_in_the_registry_the_worker_exposes() -> None:
    """A metric declared without registry=REGISTRY goes to prometheus_client's default registry
    and is never on /metrics (healthscore_events_out_of_order_total was, until 2026-12-06)."""
    from prometheus_client import Counter, Gauge, Histogram, generate_latest

    from stream import metrics

    declared = {name: value for name, value in vars(metrics).items() if isinstance(value, (Counter, Gauge, Histogram))}
    registered = {collector for collector in metrics.REGISTRY._collector_to_names}
    assert declared and [name for name, value in declared.items() if value not in registered] == []
    metrics.initialize(["usage"], [])
    assert 'healthscore_events_out_of_order_total{topic="usage"} 0.0' in generate_latest(metrics.REGISTRY).decode()
