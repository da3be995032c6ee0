//! The model's per-event path in Rust (`scoring._kernel`), which the worker runs for each
//! event where it is built (README, "The Rust kernel"), the sweep's due-time search
//! (`next_sweep_due`, src/due.rs) for the worker's sweep and the replay, and the replay's
//! steps and sweep visits on encoded records (`replay_step`, `replay_visit`), and the fleet
//! export's recount of a customer (`fleet_recount`, src/fleet.rs). Each part is held equal to
//! `scoring/`, the reference, by the differential tests in tests/unit/test_kernel.py.

mod alerts;
mod apply;
mod due;
mod fleet;
mod fleet_py;
mod health;
mod message;
mod msgpack;
mod state;
mod validate;

/// The kernel allocates and frees a record's strings and lists on every call.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use alerts::{Action, AlertParameters};
use apply::{Event, Outcome};
use health::{ChurnModel, HealthScore, Parameters};
use state::{CustomerState, PublishedScore};

fn decode_or_new(stored: Option<&[u8]>, customer_id: &str) -> PyResult<CustomerState> {
    match stored {
        Some(bytes) => state::decode(bytes).map_err(PyValueError::new_err),
        None => Ok(CustomerState::new(customer_id)),
    }
}

/// A recount on the RocksDB store: (the customer's next moment, its contribution as kept on disk, its KPI row).
type Recounted<'py> = (Option<i64>, Option<Bound<'py, PyBytes>>, Option<(String, Bound<'py, PyBytes>)>);
type ComponentRow = (&'static str, f64, f64, f64);
type ScoreRow = (f64, &'static str, f64, Vec<ComponentRow>, i64, f64, Vec<(String, f64)>);

fn score_row(health: HealthScore) -> ScoreRow {
    let components = health.components.iter().map(|c| (c.name, c.score, c.weight, c.contribution)).collect();
    (health.score, health.band, health.churn_risk, components, health.as_of_ms, health.confidence, health.changes)
}

/// `scoring.health.has_changed`.
fn has_changed(previous: &PublishedScore, current: &HealthScore) -> bool {
    if previous.score != current.score || previous.band != current.band {
        return true;
    }
    if previous.contributions.len() != current.components.len()
        || current.components.iter().any(|component| !previous.contributions.iter().any(|(name, _)| name == component.name))
    {
        return true;
    }
    // A component's contribution moved (to the published hundredth): under a cap the score stays put.
    current.components.iter().any(|component| {
        let before = previous.contributions.iter().find(|(name, _)| name == component.name).map_or(0.0, |(_, value)| *value);
        health::py_round(component.contribution, 2) != health::py_round(before, 2)
    })
}

/// A published score as the worker needs it: the message's bytes, the score and the churn risk.
type Published<'py> = (Bound<'py, PyBytes>, f64, f64);
/// A raised alert: its id (for the ledger of alerts already out), rule, severity and message.
type Raised<'py> = (String, &'static str, &'static str, Bound<'py, PyBytes>);
type StepResult<'py> = (&'static str, Bound<'py, PyBytes>, Option<Published<'py>>, Vec<Raised<'py>>, Vec<(&'static str, &'static str)>);

/// A replay's alert line: the moment it was raised, its churn risk, the line.
type ReplayAlert<'py> = (i64, f64, Bound<'py, PyBytes>);
/// A replay step: the outcome, the record's new bytes, the score line or None, the alert lines.
type ReplayStep<'py> = (&'static str, Bound<'py, PyBytes>, Option<Bound<'py, PyBytes>>, Vec<ReplayAlert<'py>>);
/// A replay's visit of a due customer at a sweep: what happened ("evicted", "later": not due
/// yet, "passed": not silent long enough to rescore, "swept"), the record's new bytes when it
/// changed, the score line or None, the alert lines, and when the customer is next due.
type ReplayVisit<'py> = (&'static str, Option<Bound<'py, PyBytes>>, Option<Bound<'py, PyBytes>>, Vec<ReplayAlert<'py>>, i64);

/// The parameters, built once (`scoring/kernel.py` from the worker's settings; without BG/NBD).
#[pyclass(frozen)]
struct Kernel {
    parameters: Parameters,
    rules: Option<AlertParameters>,
    model_version: String,
}

#[pymethods]
impl Kernel {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (weights, segment_weights, healthy_min, at_risk_min, healthy_min_active_days, usage_half_life_days, key_features, purchase_half_life_days, support_target_resolution_hours, sentiment_half_life_days, survey_response_days, unanswered_survey_points, relationship_half_life_days, rules, model_version, user_hash_key, churn_model=None))]
    fn new(
        weights: Vec<(String, f64)>,
        segment_weights: Vec<(String, Vec<(String, f64)>)>,
        healthy_min: f64,
        at_risk_min: f64,
        healthy_min_active_days: i64,
        usage_half_life_days: f64,
        key_features: Vec<String>,
        purchase_half_life_days: f64,
        support_target_resolution_hours: f64,
        sentiment_half_life_days: f64,
        survey_response_days: f64,
        unanswered_survey_points: f64,
        relationship_half_life_days: f64,
        rules: Option<&Bound<'_, PyAny>>,
        model_version: String,
        user_hash_key: Vec<u8>,
        churn_model: Option<(f64, Vec<f64>, f64)>,
    ) -> PyResult<Self> {
        let rules = match rules {
            None => None,
            Some(rules) => Some(AlertParameters {
                band_downgrade: rules.getattr("band_downgrade")?.extract()?,
                hysteresis_points: rules.getattr("hysteresis_points")?.extract()?,
                sharp_drop: rules.getattr("sharp_drop")?.extract()?,
                sharp_drop_points: rules.getattr("sharp_drop_points")?.extract()?,
                sharp_drop_window_days: rules.getattr("sharp_drop_window_days")?.extract()?,
                sharp_drop_window_text: rules.py().eval(c"lambda days: format(days, 'g')", None, None)?.call1((rules.getattr("sharp_drop_window_days")?,))?.extract()?,
                purchase_activity: rules.getattr("purchase_activity")?.extract()?,
                purchase_lapse_gap_multiplier: rules.getattr("purchase_lapse_gap_multiplier")?.extract()?,
                purchase_lapse_min_days: rules.getattr("purchase_lapse_min_days")?.extract()?,
                purchase_lapse_min_purchases: rules.getattr("purchase_lapse_min_purchases")?.extract()?,
                payment_trouble: rules.getattr("payment_trouble")?.extract()?,
                payment_failures_30d: rules.getattr("payment_failures_30d")?.extract()?,
                payment_overdue_days: rules.getattr("payment_overdue_days")?.extract()?,
                cancellation: rules.getattr("cancellation")?.extract()?,
                time_band_gap_multiplier: rules.getattr("time_band_gap_multiplier")?.extract()?,
                silence: rules.getattr("silence")?.extract()?,
                silence_gap_multiplier: rules.getattr("silence_gap_multiplier")?.extract()?,
                silence_min_days: rules.getattr("silence_min_days")?.extract()?,
                silence_min_active_days: rules.getattr("silence_min_active_days")?.extract()?,
                cooldown_hours: rules.getattr("cooldown_hours")?.extract()?,
                max_alerts_per_customer_30d: rules.getattr("max_alerts_per_customer_30d")?.extract()?,
                digest_rules: rules.getattr("digest_rules")?.extract()?,
                detractor: rules.getattr("detractor")?.extract()?,
                actions: rules
                    .getattr("actions")?
                    .try_iter()?
                    .map(|action| {
                        let action = action?;
                        Ok(Action {
                            rule: action.getattr("rule")?.extract()?,
                            action: action.getattr("action")?.extract()?,
                            owner: action.getattr("owner")?.extract()?,
                            due_hours: action.getattr("due_hours")?.extract()?,
                            severity: action.getattr("severity")?.extract()?,
                            band: action.getattr("band")?.extract()?,
                        })
                    })
                    .collect::<PyResult<Vec<Action>>>()?,
            }),
        };
        Ok(Kernel {
            rules,
            model_version,
            parameters: Parameters {
                weights,
                segment_weights,
                healthy_min,
                at_risk_min,
                healthy_min_active_days,
                usage_half_life_days,
                key_features,
                purchase_half_life_days,
                support_target_resolution_hours,
                sentiment_half_life_days,
                survey_response_days,
                unanswered_survey_points,
                relationship_half_life_days,
                user_hash_key,
                churn_model: churn_model.map(|(intercept, coefficients, horizon_days)| ChurnModel { intercept, coefficients, horizon_days }),
            },
        })
    }

    /// The record decoded and encoded again (what a change of nothing must give back).
    #[staticmethod]
    fn roundtrip<'py>(py: Python<'py>, stored: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let state = state::decode(stored).map_err(PyValueError::new_err)?;
        Ok(PyBytes::new(py, &state::encode(&state)))
    }

    /// `scoring.health.score_state` of a stored record at `at_ms` (with the contributions
    /// of its published score, as the pipeline passes them); None without data.
    fn score(&self, stored: &[u8], at_ms: i64) -> PyResult<Option<ScoreRow>> {
        let state = state::decode(stored).map_err(PyValueError::new_err)?;
        let previous = state.published.as_ref().map(|published| published.contributions.as_slice());
        let previous_score = state.published.as_ref().map(|published| published.score);
        Ok(health::score_state(&state, at_ms, &self.parameters, previous, previous_score).map(score_row))
    }

    /// The fleet export's recount of one customer (`stream.worker.fleet.FleetExport._recount`):
    /// the contribution of `before` (the record counted at `counted_at_ms`) leaves `sums`, that
    /// of `current` at `now_ms` joins them (`same`: both are the same bytes, decoded once).
    /// Returns when `before` was next due (when `unschedule`), when `current` is next due, and
    /// its KPI row (customer id, JSON) when `kpis` (with the LTV's churn risk when `ltv`).
    /// A record the kernel cannot read raises ValueError before anything changed (the caller
    /// counts that customer in Python).
    #[pyo3(signature = (sums, before, counted_at_ms, current, same, now_ms, unschedule, kpis, ltv))]
    #[allow(clippy::too_many_arguments)]
    fn fleet_recount<'py>(
        &self,
        py: Python<'py>,
        mut sums: PyRefMut<'_, fleet_py::FleetSums>,
        before: Option<&[u8]>,
        counted_at_ms: i64,
        current: Option<&[u8]>,
        same: bool,
        now_ms: i64,
        unschedule: bool,
        kpis: bool,
        ltv: bool,
    ) -> PyResult<(Option<i64>, Option<i64>, Option<(String, Bound<'py, PyBytes>)>)> {
        let old = before.map(state::decode).transpose().map_err(PyValueError::new_err)?;
        let new = if same { None } else { current.map(state::decode).transpose().map_err(PyValueError::new_err)? };
        let mut old_due = None;
        if let Some(old) = &old {
            let part = sums.contribution(old, counted_at_ms);
            sums.apply(&part, -1);
            if unschedule {
                old_due = fleet::unchanged_until(old, counted_at_ms, &sums.shifts);
            }
        }
        let Some(new) = (if same { old.as_ref() } else { new.as_ref() }) else {
            return Ok((old_due, None, None));
        };
        let part = sums.contribution(new, now_ms);
        sums.apply(&part, 1);
        let new_due = fleet::unchanged_until(new, now_ms, &sums.shifts);
        Ok((old_due, new_due, self.kpi_row(py, &sums, new, now_ms, kpis, ltv)))
    }

    /// The RocksDB store's recount (`FleetExport._recount_on_disk`): takes the contribution the
    /// totals counted for the customer (`counted`, `fleet::encode_counted`'s bytes, None: not
    /// counted) out of `sums` and puts the current record's in. Returns (its next moment, its
    /// contribution as kept on disk, its KPI row); all None when there is no record. Raises
    /// ValueError, having changed nothing, when either cannot be read.
    #[pyo3(signature = (sums, counted, current, now_ms, kpis, ltv))]
    #[allow(clippy::too_many_arguments)]
    fn fleet_recount_counted<'py>(
        &self,
        py: Python<'py>,
        mut sums: PyRefMut<'_, fleet_py::FleetSums>,
        counted: Option<&[u8]>,
        current: Option<&[u8]>,
        now_ms: i64,
        kpis: bool,
        ltv: bool,
    ) -> PyResult<Recounted<'py>> {
        self.recount_counted(py, &mut sums, counted, current, now_ms, kpis, ltv).map_err(PyValueError::new_err)
    }

    /// `fleet_recount_counted` for a chunk of customers in one call (the RocksDB export's walk
    /// of due customers: one crossing into the kernel, not one per customer). Each item is that
    /// function's result for the same item of `counted` and `current`, or None where it would
    /// have raised ValueError: nothing was changed for that customer, whom the caller recounts
    /// on its own. ValueError when the two lists differ in length. The recounts run without the
    /// GIL (on copies of the bytes), so the export can recount two partitions' chunks at once.
    #[pyo3(signature = (sums, counted, current, now_ms, kpis, ltv))]
    #[allow(clippy::too_many_arguments)]
    fn fleet_recount_counted_many<'py>(
        &self,
        py: Python<'py>,
        mut sums: PyRefMut<'_, fleet_py::FleetSums>,
        counted: Vec<Option<Bound<'py, PyBytes>>>,
        current: Vec<Option<Bound<'py, PyBytes>>>,
        now_ms: i64,
        kpis: bool,
        ltv: bool,
    ) -> PyResult<Vec<Option<Recounted<'py>>>> {
        if counted.len() != current.len() {
            return Err(PyValueError::new_err(format!("{} counted contributions for {} records", counted.len(), current.len())));
        }
        let copy = |items: &[Option<Bound<'py, PyBytes>>]| -> Vec<Option<Vec<u8>>> { items.iter().map(|bytes| bytes.as_ref().map(|bytes| bytes.as_bytes().to_vec())).collect() };
        let (counted, current) = (copy(&counted), copy(&current));
        let sums: &mut fleet_py::FleetSums = &mut sums;
        let recounted: Vec<Option<RecountedBytes>> = py.allow_threads(|| {
            counted.iter().zip(&current).map(|(old, new)| self.recount_bytes(sums, old.as_deref(), new.as_deref(), now_ms, kpis, ltv).ok()).collect()
        });
        Ok(recounted.into_iter().map(|item| item.map(|recounted| to_python(py, recounted))).collect())
    }

    /// `stream.worker.fleet.customer_kpis_json` of a stored record (with this model's churn
    /// risk for the LTV when `ltv`), for the differential tests.
    #[pyo3(signature = (stored, at_ms, key_features, response_days, ltv))]
    fn fleet_kpis_json<'py>(&self, py: Python<'py>, stored: &[u8], at_ms: i64, key_features: Vec<String>, response_days: f64, ltv: bool) -> PyResult<Bound<'py, PyBytes>> {
        let state = state::decode(stored).map_err(PyValueError::new_err)?;
        let churn_risk = if ltv { self.churn_risk(&state, at_ms.max(state.last_event_ms)) } else { None };
        Ok(PyBytes::new(py, &fleet::kpis_json(&state, at_ms, &key_features, response_days, churn_risk)))
    }

    /// `scoring.due.next_sweep_due` of a stored record: the first moment after `at_ms` at which
    /// a sweep could matter for this customer (the due-time index's question).
    #[pyo3(signature = (stored, at_ms, min_change, silence_ms, ttl_ms, step_ms))]
    fn next_sweep_due(&self, stored: &[u8], at_ms: i64, min_change: f64, silence_ms: i64, ttl_ms: i64, step_ms: i64) -> PyResult<i64> {
        let state = state::decode(stored).map_err(PyValueError::new_err)?;
        let search = due::Search { parameters: &self.parameters, rules: self.rules.as_ref(), min_change, silence_ms, ttl_ms, step_ms };
        Ok(due::next_sweep_due(&state, at_ms, &search))
    }

    /// `scoring.pipeline.step` of one event that `scoring.contract` accepted: apply it,
    /// rescore at the customer's newest event time, check the alert rules, record the score
    /// if it changed. Returns the outcome, the record's new bytes, the published score
    /// (message, score, churn risk) or None, the alerts raised (id, rule, severity, message)
    /// and the rules whose alert the cooldown held back (rule, severity). Messages are
    /// stamped `computed_at_ms`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (stored, customer_id, value, occurred_at_ms, due_ms, source, dedup_capacity, computed_at_ms))]
    fn step<'py>(
        &self,
        py: Python<'py>,
        stored: Option<&[u8]>,
        customer_id: &str,
        value: &[u8],
        occurred_at_ms: i64,
        due_ms: Option<i64>,
        source: Option<(usize, i64, i64)>,
        dedup_capacity: usize,
        computed_at_ms: i64,
    ) -> PyResult<StepResult<'py>> {
        let event = validate::read_accepted(value, occurred_at_ms, due_ms).map_err(PyValueError::new_err)?;
        self.run(py, stored, customer_id, &event, source, dedup_capacity, computed_at_ms)
    }

    /// `step` of a raw message, validated here when `scoring.contract` surely accepts it
    /// (src/validate.rs): (customer id, event time, and what `step` returns); None when
    /// the kernel leaves the message to `scoring.contract`, which names any reason to refuse it.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (stored, key, value, stream, now_ms, max_future_skew_ms, partition, offset, dedup_capacity, computed_at_ms))]
    fn step_raw<'py>(
        &self,
        py: Python<'py>,
        stored: Option<&[u8]>,
        key: &[u8],
        value: &[u8],
        stream: usize,
        now_ms: i64,
        max_future_skew_ms: i64,
        partition: i64,
        offset: i64,
        dedup_capacity: usize,
        computed_at_ms: i64,
    ) -> PyResult<Option<(String, i64, StepResult<'py>)>> {
        let Some((event, customer_id)) = validate::accepted(key, value, stream, now_ms, max_future_skew_ms) else {
            return Ok(None);
        };
        let result = self.run(py, stored, &customer_id, &event, Some((stream, partition, offset)), dedup_capacity, computed_at_ms)?;
        Ok(Some((customer_id, event.occurred_at_ms, result)))
    }

    /// `scoring.replay.Replayer`'s step of one event of a history (validated by
    /// `scoring.contract`, as `step` takes it), with the replay's lines instead of messages.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (stored, customer_id, value, occurred_at_ms, due_ms, dedup_capacity))]
    fn replay_step<'py>(
        &self,
        py: Python<'py>,
        stored: Option<&[u8]>,
        customer_id: &str,
        value: &[u8],
        occurred_at_ms: i64,
        due_ms: Option<i64>,
        dedup_capacity: usize,
    ) -> PyResult<ReplayStep<'py>> {
        let event = validate::read_accepted(value, occurred_at_ms, due_ms).map_err(PyValueError::new_err)?;
        let mut state = decode_or_new(stored, customer_id)?;
        let outcome = apply::apply_event(&mut state, &event, dedup_capacity, None, &self.parameters.user_hash_key);
        let (mut score_line, mut alert_lines) = (None, Vec::new());
        if outcome == Outcome::Applied {
            let (health, decision) = {
                let at_ms = state.last_event_ms;
                self.score_and_alert(&mut state, at_ms, 0.0, Some(&event))
            };
            (score_line, alert_lines) = self.replay_lines(py, customer_id, health, &decision, Some(&event.event_id));
        }
        Ok((outcome.name(), PyBytes::new(py, &state::encode(&state)), score_line, alert_lines))
    }

    /// `scoring.replay.Replayer._sweep_due` for one customer at the sweep at `sweep_at`:
    /// evicted after `ttl_ms` without an event; one `changed` by an event since the last
    /// sweep is left for later when its due moment is after this sweep; rescored (as
    /// `scoring.pipeline.sweep`) when silent for a `period_ms`; then its next due moment
    /// (the next sweep when it just published: still moving).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (stored, sweep_at, changed, min_change, period_ms, ttl_ms))]
    fn replay_visit<'py>(
        &self,
        py: Python<'py>,
        stored: &[u8],
        sweep_at: i64,
        changed: bool,
        min_change: f64,
        period_ms: i64,
        ttl_ms: i64,
    ) -> PyResult<ReplayVisit<'py>> {
        let mut state = state::decode(stored).map_err(PyValueError::new_err)?;
        if ttl_ms > 0 && state.last_event_ms > 0 && sweep_at - state.last_event_ms >= ttl_ms {
            return Ok(("evicted", None, None, Vec::new(), 0));
        }
        let search = due::Search { parameters: &self.parameters, rules: self.rules.as_ref(), min_change, silence_ms: period_ms, ttl_ms, step_ms: period_ms };
        if changed {
            let due = due::next_sweep_due(&state, sweep_at - 1, &search);
            if due > sweep_at {
                return Ok(("later", None, None, Vec::new(), due));
            }
        }
        if sweep_at - state.last_event_ms < period_ms {
            return Ok(("passed", None, None, Vec::new(), due::next_sweep_due(&state, sweep_at, &search)));
        }
        let at_ms = sweep_at.max(state.last_event_ms);
        let (health, decision) = self.score_and_alert(&mut state, at_ms, min_change, None);
        let published = health.is_some();
        let customer_id = state.customer_id.clone();
        let (score_line, alert_lines) = self.replay_lines(py, &customer_id, health, &decision, None);
        let next = if published { sweep_at + period_ms } else { due::next_sweep_due(&state, sweep_at, &search) };
        Ok(("swept", Some(PyBytes::new(py, &state::encode(&state))), score_line, alert_lines, next))
    }
}

impl Kernel {
    #[allow(clippy::too_many_arguments)]
    fn run<'py>(
        &self,
        py: Python<'py>,
        stored: Option<&[u8]>,
        customer_id: &str,
        event: &Event,
        source: Option<(usize, i64, i64)>,
        dedup_capacity: usize,
        computed_at_ms: i64,
    ) -> PyResult<StepResult<'py>> {
        let mut state = decode_or_new(stored, customer_id)?;
        let outcome = apply::apply_event(&mut state, event, dedup_capacity, source, &self.parameters.user_hash_key);
        let mut published = None;
        let mut raised = Vec::new();
        let mut suppressed = Vec::new();
        if outcome == Outcome::Applied {
            let (health, decision) = {
                let at_ms = state.last_event_ms;
                self.score_and_alert(&mut state, at_ms, 0.0, Some(event))
            };
            for alert in &decision.raised {
                let message = message::alert_message(alert, computed_at_ms, &self.model_version);
                raised.push((alert.alert_id.clone(), alert.rule, alert.severity, PyBytes::new(py, &message)));
            }
            suppressed = decision.suppressed;
            if let Some(health) = health {
                let message = message::health_message(customer_id, &health, computed_at_ms, &self.model_version, Some(&event.event_id));
                published = Some((PyBytes::new(py, &message), health.score, health.churn_risk));
            }
        }
        Ok((outcome.name(), PyBytes::new(py, &state::encode(&state)), published, raised, suppressed))
    }

    /// `scoring.pipeline._score_and_alert`: scores at `at_ms`, checks the alert rules (a sweep
    /// when `event` is None: `by_time`), and records the score as published when it changed
    /// (by `min_change` at least within its band). Returns the score when it is to be published.
    fn score_and_alert(
        &self,
        state: &mut CustomerState,
        at_ms: i64,
        min_change: f64,
        event: Option<&Event>,
    ) -> (Option<HealthScore>, alerts::AlertDecision) {
        let previous = state.published.as_ref().map(|published| published.contributions.as_slice());
        let previous_score = state.published.as_ref().map(|published| published.score);
        let Some(health) = health::score_state(state, at_ms, &self.parameters, previous, previous_score) else {
            return (None, alerts::AlertDecision::default());
        };
        let decision = match &self.rules {
            Some(rules) => alerts::evaluate(state, &health, at_ms, &self.parameters, rules, event, event.is_none()),
            None => alerts::AlertDecision::default(),
        };
        if let Some(previous) = &state.published {
            if !has_changed(previous, &health) || (previous.band == health.band && (health.score - previous.score).abs() < min_change) {
                return (None, decision);
            }
        }
        state.published = Some(PublishedScore {
            score: health.score,
            band: health.band.to_owned(),
            as_of_ms: health.as_of_ms,
            contributions: health.components.iter().map(|c| (c.name.to_owned(), c.contribution)).collect(),
        });
        (Some(health), decision)
    }

    /// The replay's lines for what one step or sweep gave: the score line (the message stamped
    /// at its own moment, after `"kind":"score"`) and each alert (the moment it was raised,
    /// its churn risk for the fleet budget's order, and its line).
    fn replay_lines<'py>(
        &self,
        py: Python<'py>,
        customer_id: &str,
        health: Option<HealthScore>,
        decision: &alerts::AlertDecision,
        trigger_event_id: Option<&str>,
    ) -> (Option<Bound<'py, PyBytes>>, Vec<ReplayAlert<'py>>) {
        let score_line = health.map(|health| {
            let message = message::health_message(customer_id, &health, health.as_of_ms, &self.model_version, trigger_event_id);
            PyBytes::new(py, &line("score", &message))
        });
        let alert_lines = decision
            .raised
            .iter()
            .map(|alert| {
                let message = message::alert_message(alert, alert.occurred_at_ms, &self.model_version);
                (alert.occurred_at_ms, alert.churn_risk, PyBytes::new(py, &line("alert", &message)))
            })
            .collect();
        (score_line, alert_lines)
    }
}

impl Kernel {
    /// `scoring.health.score_state(state, at_ms, parameters).churn_risk` (None without data).
    fn churn_risk(&self, state: &CustomerState, at_ms: i64) -> Option<f64> {
        health::score_state(state, at_ms, &self.parameters, None, None).map(|health| health.churn_risk)
    }

    /// `fleet_recount_counted`'s work; Err (nothing changed) when either cannot be read.
    #[allow(clippy::too_many_arguments)]
    fn recount_counted<'py>(
        &self,
        py: Python<'py>,
        sums: &mut fleet_py::FleetSums,
        counted: Option<&[u8]>,
        current: Option<&[u8]>,
        now_ms: i64,
        kpis: bool,
        ltv: bool,
    ) -> Result<Recounted<'py>, String> {
        self.recount_bytes(sums, counted, current, now_ms, kpis, ltv).map(|recounted| to_python(py, recounted))
    }

    /// `recount_counted` with Rust values only (no Python object: it may run without the GIL).
    fn recount_bytes(&self, sums: &mut fleet_py::FleetSums, counted: Option<&[u8]>, current: Option<&[u8]>, now_ms: i64, kpis: bool, ltv: bool) -> Result<RecountedBytes, String> {
        let old = counted.map(fleet::decode_counted).transpose()?;
        let new = current.map(state::decode).transpose()?;
        if let Some(old) = &old {
            sums.apply(old, -1);
        }
        let Some(new) = new else {
            return Ok((None, None, None));
        };
        let part = sums.contribution(&new, now_ms);
        sums.apply(&part, 1);
        let due = fleet::unchanged_until(&new, now_ms, &sums.shifts);
        Ok((due, Some(fleet::encode_counted(&part)), self.kpi_json(sums, &new, now_ms, kpis, ltv)))
    }

    /// A recounted customer's KPI row (`stream.worker.fleet.customer_kpis_json`), when written.
    fn kpi_row<'py>(&self, py: Python<'py>, sums: &fleet_py::FleetSums, state: &CustomerState, now_ms: i64, kpis: bool, ltv: bool) -> Option<(String, Bound<'py, PyBytes>)> {
        self.kpi_json(sums, state, now_ms, kpis, ltv).map(|(customer, json)| (customer, PyBytes::new(py, &json)))
    }

    fn kpi_json(&self, sums: &fleet_py::FleetSums, state: &CustomerState, now_ms: i64, kpis: bool, ltv: bool) -> Option<(String, Vec<u8>)> {
        if !kpis {
            return None;
        }
        let churn_risk = if ltv { self.churn_risk(state, now_ms.max(state.last_event_ms)) } else { None };
        Some((state.customer_id.clone(), fleet::kpis_json(state, now_ms, &sums.key_features, sums.response_days, churn_risk)))
    }
}

/// A recount's result as Rust values (`Recounted` once made Python objects).
type RecountedBytes = (Option<i64>, Option<Vec<u8>>, Option<(String, Vec<u8>)>);

fn to_python(py: Python<'_>, (due, counted, row): RecountedBytes) -> Recounted<'_> {
    (due, counted.map(|bytes| PyBytes::new(py, &bytes)), row.map(|(customer, json)| (customer, PyBytes::new(py, &json))))
}

/// A replay output line: `{"kind":"<kind>",` then the message's own fields, and a newline.
fn line(kind: &str, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + kind.len() + 12);
    out.extend_from_slice(b"{\"kind\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",");
    out.extend_from_slice(&message[1..]);
    out.push(b'\n');
    out
}

/// Python's `round(value, digits)` as the kernel computes it (for the tests).
#[pyfunction]
fn py_round(value: f64, digits: usize) -> f64 {
    health::py_round(value, digits)
}

#[pymodule]
fn _kernel(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Kernel>()?;
    module.add_function(wrap_pyfunction!(py_round, module)?)?;
    module.add_class::<fleet_py::FleetSums>()?;
    module.add_function(wrap_pyfunction!(fleet_py::fleet_contribution, module)?)?;
    module.add_function(wrap_pyfunction!(fleet_py::fleet_unchanged_until, module)?)?;
    Ok(())
}
