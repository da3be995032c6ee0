"""The fault campaign as tests: a generated history goes through real workers under a fault, and
what they published is compared with ``healthscore replay`` of the same file.

Each scenario loads the whole history onto the input topics before a worker starts (a
backlog: a deploy, a restart, a consumer catching up), so the worker reads the four topics
at whatever pace their fetches come; then the fault. Compared with the replay:

- every customer's last published score, band and ``as_of``, for every customer either side
  published (exact);
- the alert ids, in both directions, exactly: the alerts raised by events, which depend on
  the order the events are applied in. The sweep is left out on both sides (the worker's
  runs at wall time, the replay's in event time; docs/alerts.md), so both apply the same
  events only;
- no alert id published twice;
- and that the fault landed where it was meant to: mid-backlog.

Add a scenario by writing a function that takes the :class:`Campaign` and injects its fault.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest
from click.testing import CliRunner

from stream.cli import main
from stream.commands.generate import write_history
from tests.integration.conftest import (
    FAULT_INJECTION,
    PROJECT_ROOT,
    Namespace,
    PrivateBroker,
    WorkerProcess,
    committed_and_end_offsets,
    free_port,
    kcat_consume,
    make_namespace,
    metric_value,
    produce_file,
    wait_for,
)

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
CUSTOMERS, EVENTS = 500, 25_000
OUTAGE_SECONDS = 10
#: Every rule on, no budget: the alerts most sensitive to the order events are applied in
#: (the defaults raise about a hundred alerts from events on this history, too few to tell).
SENSITIVE_ALERTS = {
    "HEALTHSCORE_ALERTS__SHARP_DROP": "true",
    "HEALTHSCORE_ALERTS__PAYMENT_TROUBLE": "true",
    "HEALTHSCORE_ALERTS__MAX_ALERTS_PER_CUSTOMER_30D": "0",
}


@dataclass(frozen=True)
class Expected:
    """What the replay of the history gives: final (score, band) per customer, and alert ids."""

    history: Path
    finals: dict[str, tuple[float, str, str]]  # customer -> (score, band, as_of) of its last score
    alert_ids: set[str]


#: A fleet budget that binds on this history: 8 alerts a day over 4 partitions, 2 each.
FLEET_BUDGET = {"HEALTHSCORE_ALERTS__MAX_ALERTS_PER_DAY": "8"}
PARTITIONS = 4


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("campaign")
    path = folder / "history.jsonl"
    end = int(time.time() * 1000) - 3_600_000
    write_history(str(path), str(folder / "labels.csv"), customers=CUSTOMERS, events=EVENTS, start_ms=end - 60 * DAY_MS, end_ms=end, seed=24)
    return path


@pytest.fixture(scope="module")
def expected(history: Path) -> Expected:
    return replayed(history, SENSITIVE_ALERTS)


@pytest.fixture(scope="module")
def expected_within_budget(history: Path) -> Expected:
    return replayed(history, {**SENSITIVE_ALERTS, **FLEET_BUDGET})


def replayed(history: Path, env: dict[str, str]) -> Expected:
    """What the replay of the history gives with these settings (the workers' partitions too)."""
    result = CliRunner().invoke(
        main, ["replay", "--input", str(history), "--sweep-every", "0"], env={**env, "HEALTHSCORE_PARTITIONS": str(PARTITIONS)}
    )
    assert result.exit_code == 0, result.output
    finals: dict[str, tuple[float, str, str]] = {}
    alert_ids: set[str] = set()
    for line in result.stdout.splitlines():
        record = json.loads(line)
        if record["kind"] == "score":
            finals[record["customer_id"]] = (record["score"], record["band"], record["as_of"])
        elif record["kind"] == "alert":
            alert_ids.add(record["alert_id"])
    assert len(finals) == CUSTOMERS and len(alert_ids) > 200, (len(finals), len(alert_ids))
    return Expected(history, finals, alert_ids)


@dataclass
class Campaign:
    """One scenario's namespace, its workers, and what they published."""

    namespace: Namespace
    folder: Path
    sent: int = 0
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(self, second: bool = False) -> WorkerProcess:
        """A worker, or a second one beside it (its own web port and data directory)."""
        namespace = self.namespace
        if second:
            env = {**namespace.env, "HEALTHSCORE_WEB_PORT": str(free_port()), "HEALTHSCORE_DATA_DIR": str(self.folder / "second-data")}
            namespace = dataclasses.replace(namespace, env=env)
        worker = WorkerProcess(namespace, self.folder / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        worker.start(timeout=90)
        return worker

    def applied(self, worker: WorkerProcess) -> float:
        inputs = self.namespace.settings.topics.inputs()
        try:
            return sum(metric_value(worker.metrics_url, "healthscore_events_total", topic=t, outcome="applied") for t in inputs)
        except OSError:
            return 0.0

    def out_of_order(self, worker: WorkerProcess) -> float:
        inputs = self.namespace.settings.topics.inputs()
        return sum(metric_value(worker.metrics_url, "healthscore_events_out_of_order_total", topic=t) for t in inputs)

    def wait_until_applied(self, worker: WorkerProcess, at_least: float) -> None:
        wait_for(lambda: self.applied(worker) >= at_least, timeout=120, interval=0.05, message=f"{at_least} events applied", explain=worker.log_tail)

    def wait_until_all_committed(self, timeout: float = 240) -> None:
        settings = self.namespace.settings

        def done() -> bool:
            for topic in settings.topics.inputs():
                committed, ends = committed_and_end_offsets(settings.app_id, topic, settings.partitions, settings.kafka_bootstrap)
                if committed != ends:
                    return False
            return True

        wait_for(done, timeout=timeout, interval=1, message="every input record committed", explain=lambda: self.workers[-1].log_tail())

    def published(self) -> tuple[dict[str, tuple[float, str, str]], list[str]]:
        finals: dict[str, tuple[float, str, str]] = {}
        bootstrap = self.namespace.settings.kafka_bootstrap
        for line in kcat_consume(self.namespace.topic("health"), bootstrap=bootstrap):
            key, _, value = line.partition("\t")
            message = json.loads(value)
            finals[key] = (message["score"], message["band"], message["as_of"])
        alert_ids = [json.loads(line)["alert_id"] for line in kcat_consume(self.namespace.topic("alerts"), fmt="%s\n", bootstrap=bootstrap)]
        return finals, alert_ids

    def fault_landed(self) -> None:
        """The rest of the backlog goes at full speed (FAULT_BATCH_DELAY_UNTIL_FILE): what
        follows the fault is compared, not waited for."""
        (self.folder / "fault-landed").touch()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def new_campaign(namespace: Namespace, folder: Path, expected: Expected) -> Campaign:
    """The history loaded onto the namespace's input topics, and workers set up for a fault."""
    # No sweep during the scenario (its alerts depend on wall time; see the module's docstring).
    namespace.env["HEALTHSCORE_SWEEP_INTERVAL_SECONDS"] = str(400 * 86_400)
    namespace.env.update(SENSITIVE_ALERTS)
    # Small batches, each 20 ms longer: the backlog lasts about ten seconds, long enough for
    # a fault to land in its middle (tests/integration/fault_injection/sitecustomize.py).
    namespace.env.update(
        {
            # The workers create no topic: `healthscore topics` (ensure_topics) made them all.
            "HEALTHSCORE_TOPICS__ALLOW_RUNTIME_CREATION": "false",
            "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(FAULT_INJECTION)]),
            "FAULT_BATCH_DELAY_SECONDS": "0.02",
            "FAULT_BATCH_DELAY_UNTIL_FILE": str(folder / "fault-landed"),
            "HEALTHSCORE_BATCH_MAX_EVENTS": "50",
        }
    )
    run = Campaign(namespace, folder)
    run.sent = asyncio.run(produce_file(namespace, expected.history))
    return run


@pytest.fixture
def campaign(services: None, tmp_path: Path, expected: Expected) -> Iterator[Campaign]:
    run = new_campaign(make_namespace(tmp_path, partitions=PARTITIONS), tmp_path, expected)
    yield run
    run.stop()


def no_fault(campaign: Campaign) -> None:
    """The control: the same history and settings, nothing to land in the middle of, so the
    batches are not slowed."""
    campaign.namespace.env["FAULT_BATCH_DELAY_SECONDS"] = "0"
    campaign.start_worker()


def sigkill(campaign: Campaign) -> None:
    """The worker is killed with SIGKILL a third of the way through, and started again. It keeps
    its records in RocksDB (the memory store's SIGKILL is the fleet budget test's): the restarted
    worker starts from what is on its disk and the changelog written after it."""
    campaign.namespace.env["HEALTHSCORE_STATE_STORE"] = "rocksdb"
    # Commits (and so writes to disk) several times before the kill, not once at most.
    campaign.namespace.env["HEALTHSCORE_COMMIT_INTERVAL_SECONDS"] = "0.5"
    worker = campaign.start_worker()
    campaign.wait_until_applied(worker, campaign.sent / 3)
    applied = campaign.applied(worker)
    worker.kill()
    print(f"sigkill: killed after {applied:.0f} of {campaign.sent} applied")
    assert applied < campaign.sent, "the kill landed after the backlog drained: it proves nothing"
    campaign.fault_landed()
    restarted = campaign.start_worker()
    on_disk = re.findall(r"State partition \d+: about (\d+) records on local disk", restarted.log_tail(2000))
    assert on_disk and sum(map(int, on_disk)) > 0, "the restarted worker found nothing on its disk: it proves nothing"


def rebalance(campaign: Campaign) -> None:
    """A second worker joins early in the backlog: partitions move while it drains. The backlog
    is slowed more than for the other faults (50 ms a batch, about 25 s in all): a worker takes
    seconds to start and the group seconds to rebalance, and the second worker must still find
    events to apply (checked below), or the scenario proves nothing."""
    campaign.namespace.env["FAULT_BATCH_DELAY_SECONDS"] = "0.05"
    campaign.namespace.env["HEALTHSCORE_STATE_STORE"] = "rocksdb"  # partitions move between two local stores
    first = campaign.start_worker()
    campaign.wait_until_applied(first, campaign.sent / 10)
    second = campaign.start_worker(second=True)
    applied = campaign.applied(first)
    print(f"rebalance: the second worker was ready when the first had applied {applied:.0f} of {campaign.sent}")
    assert applied < campaign.sent, "the second worker joined after the backlog drained: it proves nothing"
    # The second worker got partitions and applied part of the backlog.
    wait_for(lambda: campaign.applied(second) > 0, timeout=120, message="the second worker applied events", explain=second.log_tail)
    campaign.fault_landed()


SCENARIOS: dict[str, Callable[[Campaign], None]] = {"no_fault": no_fault, "sigkill": sigkill, "rebalance": rebalance}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_backlog_under_a_fault_publishes_what_the_replay_gives(campaign: Campaign, expected: Expected, scenario: str) -> None:
    SCENARIOS[scenario](campaign)
    check_against_the_replay(campaign, expected, scenario)


def test_the_fleet_budget_is_spent_by_the_worker_as_by_the_replay(
    services: None, tmp_path: Path, expected: Expected, expected_within_budget: Expected
) -> None:
    """With a daily fleet budget that binds, the worker sends the same alerts as the replay
    with that budget: the same ones are over it (by time; at the same time, the riskiest first),
    even across a SIGKILL: the restarted worker learns what each day spent from the alerts
    topic's tail."""
    assert len(expected_within_budget.alert_ids) < len(expected.alert_ids) * 0.9  # it binds
    namespace = make_namespace(tmp_path, partitions=PARTITIONS)
    campaign = new_campaign(namespace, tmp_path, expected_within_budget)
    namespace.env.update(FLEET_BUDGET)
    try:
        sigkill(campaign)
        check_against_the_replay(campaign, expected_within_budget, "fleet_budget")
    finally:
        campaign.stop()


def test_a_broker_outage_mid_backlog_is_logged_once_and_publishes_what_the_replay_gives(
    services: None, tmp_path: Path, expected: Expected, private_broker: PrivateBroker
) -> None:
    """The broker (one of the test's own) is killed with SIGKILL a third of the way through
    the backlog and started again 10 s later (OUTAGE_SECONDS); the worker carries on.

    Without the summary (stream/worker/quiet_outages.py), a 25-second outage wrote 4,235
    WARNING/ERROR lines: a few kinds of aiokafka error, each several times a second. Here:
    each kind once, then once per log_repeat_interval_seconds (5) with the count held back."""
    namespace = private_broker.namespace(tmp_path)
    namespace.env["HEALTHSCORE_LOG_REPEAT_INTERVAL_SECONDS"] = "5"
    campaign = new_campaign(namespace, tmp_path, expected)
    try:
        worker = campaign.start_worker()
        campaign.wait_until_applied(worker, campaign.sent / 3)
        before = worker.log_path.stat().st_size
        private_broker.kill()
        time.sleep(OUTAGE_SECONDS)  # the outage's length is the fault itself, not a synchronisation
        during = worker.log_path.read_bytes()[before:].decode(errors="replace")
        applied_during = campaign.applied(worker)
        assert applied_during < campaign.sent, "the broker went down after the backlog drained: it proves nothing"
        private_broker.start()
        campaign.fault_landed()
        check_against_the_replay(campaign, expected, "broker_outage")
        assert worker.process is not None and worker.process.poll() is None, worker.log_tail()
    finally:
        campaign.stop()
    lines = [line for line in during.splitlines() if re.search(r"\b(WARNING|ERROR)\b", line)]
    kinds = {re.sub(r"\d+", "N", line.split("] ", 3)[-1].split(" (and ")[0]) for line in lines}
    summaries = [line for line in lines if re.search(r"\(and \d+ more like it in the last \d+ s\)", line)]
    print(f"{len(lines)} WARNING/ERROR lines in a {OUTAGE_SECONDS}-second outage, {len(kinds)} kinds")
    assert summaries, "\n".join(lines)
    # Each kind said once, then at most once per 5 s of the outage.
    assert len(lines) <= len(kinds) * (1 + OUTAGE_SECONDS // 5 + 1), "\n".join(lines)


def check_against_the_replay(campaign: Campaign, expected: Expected, scenario: str) -> None:
    campaign.wait_until_all_committed()
    # Every output is on its topic before the inputs' offsets are committed (the producer is
    # flushed first); alerts waiting for the alerts topic's tail go right after. So: what was
    # published converges to the replay's, or the difference stays and is reported.
    published_now: list = []

    def agrees() -> bool:
        finals, alert_ids = campaign.published()
        published_now[:] = [finals, alert_ids]
        return finals == expected.finals and set(alert_ids) == expected.alert_ids

    try:
        wait_for(agrees, timeout=30, interval=1, message="the published outputs to equal the replay's")
    except AssertionError:
        pass  # reported precisely below
    finals, alert_ids = published_now

    customers = set(finals) | set(expected.finals)
    wrong = {customer: (finals.get(customer), expected.finals.get(customer)) for customer in customers if finals.get(customer) != expected.finals.get(customer)}
    assert not wrong, f"{len(wrong)} customers' final scores differ from the replay's (worker, replay): {dict(list(wrong.items())[:5])}"
    repeated = [alert_id for alert_id, count in Counter(alert_ids).items() if count > 1]
    assert not repeated, f"alert ids published twice: {repeated[:5]}"

    published = set(alert_ids)
    missing, extra = expected.alert_ids - published, published - expected.alert_ids
    out_of_order = sum(campaign.out_of_order(worker) for worker in campaign.workers if worker.process and worker.process.poll() is None)
    print(
        f"{scenario}: {len(expected.finals)} final scores equal; alert ids: replay {len(expected.alert_ids)}, "
        f"published {len(published)}, missing {len(missing)}, extra {len(extra)}; out of order (running workers): {out_of_order:.0f}"
    )
    assert not missing and not extra, (f"missing {len(missing)}", sorted(missing)[:5], f"extra {len(extra)}", sorted(extra)[:5])
