//! The model's per-event path in Rust (`scoring._kernel`): a feasibility step, not used
//! by the worker yet. Each part is proven equal to `scoring/` by the differential tests
//! in tests/unit/test_kernel.py; `scoring/` stays the reference.

mod apply;
mod health;
mod msgpack;
mod state;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use apply::{Data, Event, Item, Outcome};
use health::{HealthScore, Parameters};
use state::{CustomerState, PublishedScore};

#[derive(Deserialize)]
struct Envelope<'a> {
    event_id: String,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct Payload {
    #[serde(default)]
    amount: f64,
    #[serde(default)]
    items: Vec<Item>,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    feature: String,
    #[serde(default)]
    count: Option<i64>,
    #[serde(default)]
    ticket_id: String,
    #[serde(default)]
    priority: String,
    #[serde(default)]
    survey: String,
    #[serde(default)]
    score: f64,
    #[serde(default)]
    scale: Option<(f64, f64)>,
    #[serde(default)]
    invoice_id: String,
    #[serde(default)]
    mrr: f64,
    #[serde(default)]
    plan: Option<String>,
}

fn parse_event(value: &[u8], occurred_at_ms: i64, due_ms: Option<i64>) -> Result<Event, String> {
    let envelope: Envelope = serde_json::from_slice(value).map_err(|error| error.to_string())?;
    let payload: Payload = match envelope.data {
        Some(raw) => serde_json::from_str(raw.get()).map_err(|error| error.to_string())?,
        None => Payload::default(),
    };
    let data = match envelope.kind {
        "purchase.completed" => Data::PurchaseCompleted { amount: payload.amount, items: payload.items },
        "purchase.refunded" => Data::PurchaseRefunded { amount: payload.amount },
        "checkout.abandoned" => Data::CheckoutAbandoned,
        "usage.session" => Data::UsageSession { user_id: payload.user_id },
        "usage.feature" => Data::UsageFeature { user_id: payload.user_id, feature: payload.feature, count: payload.count.unwrap_or(1) },
        "ticket.opened" => Data::TicketOpened { ticket_id: payload.ticket_id, priority: payload.priority },
        "ticket.resolved" => Data::TicketResolved { ticket_id: payload.ticket_id },
        "ticket.reopened" => Data::TicketReopened { ticket_id: payload.ticket_id },
        "survey.answered" => Data::SurveyAnswered { survey: payload.survey, score: payload.score, scale: payload.scale },
        "invoice.issued" => Data::InvoiceIssued {
            invoice_id: payload.invoice_id,
            amount: payload.amount,
            due_ms: due_ms.ok_or("invoice.issued needs its due time")?,
        },
        "payment.succeeded" => Data::PaymentSucceeded { invoice_id: payload.invoice_id },
        "payment.failed" => Data::PaymentFailed,
        "subscription.updated" => Data::SubscriptionUpdated { mrr: payload.mrr, plan: payload.plan },
        "subscription.cancelled" => Data::SubscriptionCancelled,
        other => return Err(format!("unknown event type {other:?}")),
    };
    Ok(Event { event_id: envelope.event_id, occurred_at_ms, data })
}

fn decode_or_new(stored: Option<&[u8]>, customer_id: &str) -> PyResult<CustomerState> {
    match stored {
        Some(bytes) => state::decode(bytes).map_err(PyValueError::new_err),
        None => Ok(CustomerState::new(customer_id)),
    }
}

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
    previous.contributions.len() != current.components.len()
        || current.components.iter().any(|component| !previous.contributions.iter().any(|(name, _)| name == component.name))
}

/// The scoring parameters, built once from `scoring.health.ScoringParameters` (without BG/NBD).
#[pyclass(frozen)]
struct Kernel {
    parameters: Parameters,
}

#[pymethods]
impl Kernel {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        weights: Vec<(String, f64)>,
        segment_weights: Vec<(String, Vec<(String, f64)>)>,
        healthy_min: f64,
        at_risk_min: f64,
        usage_half_life_days: f64,
        key_features: Vec<String>,
        purchase_half_life_days: f64,
        support_target_resolution_hours: f64,
        sentiment_half_life_days: f64,
    ) -> Self {
        Kernel {
            parameters: Parameters {
                weights,
                segment_weights,
                healthy_min,
                at_risk_min,
                usage_half_life_days,
                key_features,
                purchase_half_life_days,
                support_target_resolution_hours,
                sentiment_half_life_days,
            },
        }
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
        Ok(health::score_state(&state, at_ms, &self.parameters, previous).map(score_row))
    }

    /// `scoring.pipeline.step` without alert rules: apply one validated event, rescore at
    /// the customer's newest event time, record the score if it changed. Returns the
    /// outcome, the record's new bytes and the changed score (or None).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (stored, customer_id, value, occurred_at_ms, due_ms, source, dedup_capacity))]
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
    ) -> PyResult<(&'static str, Bound<'py, PyBytes>, Option<ScoreRow>)> {
        let event = parse_event(value, occurred_at_ms, due_ms).map_err(PyValueError::new_err)?;
        let mut state = decode_or_new(stored, customer_id)?;
        let outcome = apply::apply_event(&mut state, &event, dedup_capacity, source);
        let mut published = None;
        if outcome == Outcome::Applied {
            let at_ms = state.last_event_ms;
            let previous = state.published.as_ref().map(|published| published.contributions.as_slice());
            if let Some(health) = health::score_state(&state, at_ms, &self.parameters, previous) {
                if state.published.as_ref().is_none_or(|previous| has_changed(previous, &health)) {
                    state.published = Some(PublishedScore {
                        score: health.score,
                        band: health.band.to_owned(),
                        as_of_ms: health.as_of_ms,
                        contributions: health.components.iter().map(|c| (c.name.to_owned(), c.contribution)).collect(),
                    });
                    published = Some(score_row(health));
                }
            }
        }
        Ok((outcome.name(), PyBytes::new(py, &state::encode(&state)), published))
    }
}

#[pymodule]
fn _kernel(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Kernel>()?;
    Ok(())
}
