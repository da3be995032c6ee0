"""Replaying history through the worker's own per-customer pipeline, with event time as the clock.

The events must come sorted by event time. Between events, the inactivity sweep
runs at every multiple of the sweep period (as the worker's hourly sweep would) and
rescores the customers silent for at least one period, so decay and silence show
in the history as they would have live. No
Kafka, no wall clock: the same input gives the same output.

A sweep rescores only the customers that are due (``due_index``, the default): those with
an event since the last sweep, and those whose moment from ``scoring.due.next_sweep_due``
came. It publishes exactly what rescoring every customer at every sweep would (the full
scan, ``due_index=False``: tests/unit/test_due.py holds them equal), at a cost that grows
with the events and the due moments instead of customers × sweeps.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

from scoring.alerts import AlertParameters
from scoring.contract import Event
from scoring.due import DueSearch
from scoring.health import ScoringParameters, score_state
from scoring.pipeline import Step, due_for_sweep, expired, step, sweep
from scoring.kernel import due_ms
from scoring.output import alert_line, score_line
from scoring.state import CustomerState, Outcome, decode_state, encode_state, new_state
from scoring.structs import AlertLine, AlertRaised, FinalScore, ScoreChanged, ScoreLine

__all__ = ["AlertLine", "AlertRaised", "FinalScore", "KernelReplayer", "ScoreChanged", "ScoreLine", "Replayer"]

_OUTCOMES = {outcome.value: outcome for outcome in Outcome}
#: Yielded (an empty score line) when ``score_lines`` holds this much: time to write it out.
WRITE_AT_BYTES = 1 << 20
WRITE_NOW = ScoreLine(b"")


class Replayer:
    def __init__(
        self,
        parameters: ScoringParameters,
        rules: AlertParameters | None,
        dedup_capacity: int,
        sweep_every_ms: int | None,
        sweep_min_change: float = 1.0,
        state_ttl_ms: int = 0,
        due_index: bool = True,
        native: Any = None,
    ) -> None:
        self.parameters = parameters
        self.rules = rules
        self.dedup_capacity = dedup_capacity
        self.sweep_every_ms = sweep_every_ms
        self.sweep_min_change = sweep_min_change
        self.state_ttl_ms = state_ttl_ms
        self.evicted = 0
        self.states: dict[str, CustomerState] = {}
        #: The customers known (the records' mapping, whatever it holds).
        self._known: dict[str, Any] = self.states
        self.outcomes: dict[Outcome, int] = {outcome: 0 for outcome in Outcome}
        self.sweeps = 0
        #: Customers rescored by sweeps (the full scan rescores every silent customer at each).
        self.swept = 0
        self._next_sweep_ms: int | None = None
        self.due_index = due_index
        #: The due search (in the Rust kernel when ``native`` is given: scoring.due.DueSearch).
        self._search = DueSearch(parameters, rules, sweep_min_change, sweep_every_ms or 0, state_ttl_ms, native)
        self.native_due_search = native is not None
        #: sweep time → customers due at that sweep; customers with an event since the last sweep.
        self._due: dict[int, list[str]] = {}
        self._changed: set[str] = set()
        #: Each customer's place in ``states`` (the full scan's order), for sweeping the due ones in it.
        self._order: dict[str, int] = {}
        self._created = 0

    def _outputs(self, customer_id: str, result: Step, trigger: str | None) -> list[Any]:
        outputs: list[Any] = []
        if result.publish is not None:
            outputs.append(ScoreChanged(customer_id, result.publish, trigger))
        for alert in result.alerts.raised:
            outputs.append(AlertRaised(alert))
        return outputs

    def _sweep_until(self, at_ms: int) -> Iterator[ScoreChanged | AlertRaised]:
        """Runs every sweep due at or before ``at_ms``."""
        if self.sweep_every_ms is None or self._next_sweep_ms is None:
            return
        while self._next_sweep_ms <= at_ms:
            sweep_at = self._next_sweep_ms
            self.sweeps += 1
            if self.due_index:
                yield from self._sweep_due(sweep_at)
            else:
                yield from self._sweep_all(sweep_at)
            self._next_sweep_ms += self.sweep_every_ms

    def _sweep_all(self, sweep_at: int) -> Iterator[ScoreChanged | AlertRaised]:
        """The full scan: every customer, evicted or rescored if silent."""
        every = self.sweep_every_ms or 0
        for customer_id in [c for c, state in self.states.items() if expired(state, sweep_at, self.state_ttl_ms)]:
            del self.states[customer_id]  # as the worker's sweep evicts it
            self.evicted += 1
        for customer_id, state in self.states.items():
            if due_for_sweep(state, sweep_at, every):
                self.swept += 1
                result = sweep(state, sweep_at, self.parameters, self.rules, self.sweep_min_change)
                if result.publish is not None or result.alerts.raised:
                    yield from self._outputs(customer_id, result, None)

    def _sweep_due(self, sweep_at: int) -> Iterator[ScoreChanged | AlertRaised]:
        """The customers changed since the last sweep or due now, in the full scan's order."""
        changed, self._changed = self._changed, set()
        candidates = set(self._due.pop(sweep_at, ())) | changed
        order = self._order
        for customer_id in sorted(candidates, key=order.__getitem__):
            if customer_id in self._known:
                outputs = self._visit(customer_id, sweep_at, customer_id in changed)
                if outputs:
                    yield from outputs

    # _visit and _apply return their outputs (usually none): a generator per call costs more.
    def _visit(self, customer_id: str, sweep_at: int, changed: bool) -> Sequence[Any]:
        """One candidate of a due sweep: evicted, left for its due moment, or rescored and placed again."""
        every = self.sweep_every_ms or 0
        state = self.states[customer_id]
        if expired(state, sweep_at, self.state_ttl_ms):
            del self.states[customer_id]
            self.evicted += 1
            return ()
        if changed:  # scored at an event since the last sweep: due now, or when?
            due = self._search.next_due(state, sweep_at - 1)
            if due > sweep_at:
                self._schedule(customer_id, due)
                return ()
        published = False
        outputs: Sequence[Any] = ()
        if due_for_sweep(state, sweep_at, every):
            self.swept += 1
            result = sweep(state, sweep_at, self.parameters, self.rules, self.sweep_min_change)
            published = result.publish is not None
            if published or result.alerts.raised:
                outputs = self._outputs(customer_id, result, None)
        if published:  # still moving: most likely due again at the next sweep, no need to work it out
            self._schedule(customer_id, sweep_at + every)
        else:
            self._schedule(customer_id, self._search.next_due(state, sweep_at))
        return outputs

    def _schedule(self, customer_id: str, due_ms: int) -> None:
        """Due at the first sweep at or after ``due_ms``."""
        if not self.sweep_every_ms:
            return
        every = self.sweep_every_ms
        tick = -(-due_ms // every) * every
        self._due.setdefault(max(tick, (self._next_sweep_ms or 0) + every), []).append(customer_id)

    def customer_count(self) -> int:
        return len(self.states)

    def _event_of(self, item: Any) -> Event:
        return item  # type: ignore[no-any-return]

    def _apply(self, event: Event, item: Any) -> Sequence[Any]:
        """One event through ``scoring.pipeline.step``."""
        state = self.states.get(event.customer_id)
        if state is None:
            state = self.states[event.customer_id] = new_state(event.customer_id)
        result = step(state, event, self.parameters, self.dedup_capacity, rules=self.rules)
        self.outcomes[result.outcome] += 1
        if result.publish is None and not result.alerts.raised:
            return ()
        return self._outputs(event.customer_id, result, event.event_id)

    def run(self, events: Iterable[Any], until_ms: int | None = None) -> Iterator[Any]:
        """Applies events in order (event time), sweeping in between; stops after ``until_ms``."""
        for item in events:
            event = self._event_of(item)
            at = event.occurred_at_ms
            if until_ms is not None and at > until_ms:
                break
            if self._next_sweep_ms is None and self.sweep_every_ms:
                self._next_sweep_ms = (at // self.sweep_every_ms + 1) * self.sweep_every_ms
            if self._next_sweep_ms is not None and self._next_sweep_ms <= at:
                yield from self._sweep_until(at)
            if event.customer_id not in self._known:
                self._order[event.customer_id] = self._created
                self._created += 1
            self._changed.add(event.customer_id)
            outputs = self._apply(event, item)
            if outputs:
                yield from outputs
        if until_ms is not None:
            yield from self._sweep_until(until_ms)

    def final_scores(self, at_ms: int) -> Iterator[FinalScore]:
        """Every customer's score at ``at_ms`` (customers without data to score are left out)."""
        for customer_id in sorted(self.states):
            health = score_state(self.states[customer_id], max(at_ms, self.states[customer_id].last_event_ms), self.parameters)
            if health is not None:
                yield FinalScore(customer_id, health)


class KernelReplayer(Replayer):
    """The replay on encoded records: each customer's record stays as the bytes the worker
    stores, and each event's step, each sweep's visit and each due search run in the Rust
    kernel (``scoring.kernel.build``), which writes the output lines too. The same lines,
    byte for byte, as ``Replayer`` with the due index (tests/unit/test_replay_kernel.py),
    without a Python object per customer or per score. Events come with their wire JSON
    (``(event, line)``); one the kernel cannot read, or a record it cannot read, goes
    through the Python model instead, as in the worker."""

    def __init__(
        self,
        parameters: ScoringParameters,
        rules: AlertParameters | None,
        dedup_capacity: int,
        sweep_every_ms: int | None,
        native: Any,
        sweep_min_change: float = 1.0,
        state_ttl_ms: int = 0,
        score_lines: bytearray | None = None,
    ) -> None:
        super().__init__(parameters, rules, dedup_capacity, sweep_every_ms, sweep_min_change, state_ttl_ms, True, native)
        self.native = native
        self.records: dict[str, bytes] = {}
        self._known = self.records
        #: Where score lines go as they are made, when given (``score_lines``); how many.
        self.score_lines = score_lines
        self.scores = 0
        #: Steps and visits the kernel could not take (the Python model did).
        self.in_python = 0

    def customer_count(self) -> int:
        return len(self.records)

    def _event_of(self, item: Any) -> Event:
        return item[0]  # type: ignore[no-any-return]

    def _apply(self, event: Event, item: Any) -> Sequence[Any]:
        customer_id = event.customer_id
        stored = self.records.get(customer_id)
        try:
            outcome, record, score, alerts = self.native.replay_step(
                stored, customer_id, item[1], event.occurred_at_ms, due_ms(event.data, event.occurred_at_ms), self.dedup_capacity
            )
        except ValueError:  # a payload or record the kernel cannot read: the model takes it
            self.in_python += 1
            state = decode_state(stored) if stored is not None else new_state(customer_id)
            result = step(state, event, self.parameters, self.dedup_capacity, rules=self.rules)
            self.records[customer_id] = encode_state(state)
            self.outcomes[result.outcome] += 1
            return self._lines(self._outputs(customer_id, result, event.event_id))
        self.records[customer_id] = record
        self.outcomes[_OUTCOMES[outcome]] += 1
        return self._kernel_lines(customer_id, score, alerts)

    def _visit(self, customer_id: str, sweep_at: int, changed: bool) -> Sequence[Any]:
        every = self.sweep_every_ms or 0
        try:
            kind, record, score, alerts, due = self.native.replay_visit(
                self.records[customer_id], sweep_at, changed, self.sweep_min_change, every, self.state_ttl_ms
            )
        except ValueError:  # a record the kernel cannot read: the model's visit, on the decoded record
            return self._visit_in_python(customer_id, sweep_at, changed)
        if kind == "evicted":
            del self.records[customer_id]
            self.evicted += 1
            return ()
        if record is not None:
            self.swept += 1
            self.records[customer_id] = record
        self._schedule(customer_id, due)
        return self._kernel_lines(customer_id, score, alerts)

    def _kernel_lines(self, customer_id: str, score: bytes | None, alerts: list[tuple[int, float, bytes]]) -> Sequence[Any]:
        if score is None and not alerts:
            return ()
        outputs: list[Any] = []
        if score is not None:
            self._score(score, outputs)
        for at_ms, churn_risk, line in alerts:
            outputs.append(AlertLine(customer_id, at_ms, churn_risk, line))
        return outputs

    def _score(self, line: bytes, outputs: list[Any]) -> None:
        """A score line: appended to ``score_lines`` when given (a consumer that writes each item
        as it comes gets the same order: alerts are what the fleet budget may hold back), else
        to ``outputs``; WRITE_NOW goes there when ``score_lines`` is full."""
        if self.score_lines is None:
            outputs.append(ScoreLine(line))
        else:
            self.scores += 1
            self.score_lines += line
            if len(self.score_lines) >= WRITE_AT_BYTES:
                outputs.append(WRITE_NOW)

    def _visit_in_python(self, customer_id: str, sweep_at: int, changed: bool) -> Sequence[Any]:
        self.in_python += 1
        self.states[customer_id] = decode_state(self.records[customer_id])
        outputs = Replayer._visit(self, customer_id, sweep_at, changed)
        state = self.states.pop(customer_id, None)
        if state is None:  # evicted
            del self.records[customer_id]
        else:
            self.records[customer_id] = encode_state(state)
        return self._lines(outputs)

    def _lines(self, outputs: Iterable[Any]) -> list[Any]:
        """The Python model's outputs as the kernel's lines."""
        version = self.parameters.model_version
        lines: list[Any] = []
        for item in outputs:
            if isinstance(item, ScoreChanged):
                self._score(score_line(item.customer_id, item.health, item.trigger_event_id, version), lines)
            else:
                alert = item.alert
                lines.append(AlertLine(alert.customer_id, alert.occurred_at_ms, alert.churn_risk, alert_line(alert, version)))
        return lines

    def final_scores(self, at_ms: int) -> Iterator[FinalScore]:
        for customer_id in sorted(self.records):
            state = decode_state(self.records[customer_id])
            health = score_state(state, max(at_ms, state.last_event_ms), self.parameters)
            if health is not None:
                yield FinalScore(customer_id, health)
