//! `scoring.health.score_state` without BG/NBD, operation for operation: the same
//! IEEE operations in the same order give the same doubles (Python 3.11's `sum` of
//! floats is plain left-to-right addition, `**` and `math.exp` are the C library's).

use crate::apply::{py_max, py_min, DAY_MS};
use crate::state::*;

pub const COMPONENTS: [&str; 6] = ["usage", "purchases", "support", "sentiment", "payments", "relationship"];
/// `scoring.churn.COMPONENTS`: the components among the churn model's features.
const CHURN_COMPONENTS: [&str; 5] = ["usage", "purchases", "support", "sentiment", "payments"];
const OPEN_TICKET_PENALTY: [f64; 4] = [4.0, 8.0, 15.0, 25.0];

extern "C" {
    // The C library's, as CPython's float ** and math.exp call them.
    fn pow(base: f64, exponent: f64) -> f64;
    fn exp(value: f64) -> f64;
    fn log1p(value: f64) -> f64;
}

/// `scoring.churn.ChurnModel`: coefficients in the order of `scoring.churn.FEATURES`.
pub struct ChurnModel {
    pub intercept: f64,
    pub coefficients: Vec<f64>,
    pub horizon_days: f64,
}

/// `scoring.churn.churn_features` then `churn_probability`, operation for operation.
fn churn_probability(model: &ChurnModel, score: f64, components: &[Component], confidence: f64, silent_ms: i64, active_days: i64) -> f64 {
    let mut features = Vec::with_capacity(9);
    features.push(score / 100.0);
    for name in CHURN_COMPONENTS {
        features.push(components.iter().find(|component| component.name == name).map_or(0.5, |component| component.score / 100.0));
    }
    features.push(confidence);
    unsafe {
        features.push(log1p(silent_ms.max(0) as f64 / DAY_MS as f64));
        features.push(log1p(active_days as f64));
    }
    let mut z = model.intercept;
    for (coefficient, feature) in model.coefficients.iter().zip(&features) {
        z += coefficient * feature;
    }
    z = py_min(500.0, py_max(-500.0, z));
    1.0 / (1.0 + unsafe { exp(-z) })
}

pub struct Parameters {
    pub weights: Vec<(String, f64)>,
    pub segment_weights: Vec<(String, Vec<(String, f64)>)>,
    pub healthy_min: f64,
    pub at_risk_min: f64,
    pub healthy_min_active_days: i64,
    pub usage_half_life_days: f64,
    pub key_features: Vec<String>,
    pub purchase_half_life_days: f64,
    pub support_target_resolution_hours: f64,
    pub sentiment_half_life_days: f64,
    pub survey_response_days: f64,
    pub unanswered_survey_points: f64,
    pub relationship_half_life_days: f64,
    /// The key of the users' keyed fingerprints (privacy.hash_key).
    pub user_hash_key: Vec<u8>,
    /// A churn model fitted by `healthscore calibrate`; None: the prior.
    pub churn_model: Option<ChurnModel>,
}

impl Parameters {
    fn weights_for(&self, plan: &Option<String>) -> &[(String, f64)] {
        if let Some(plan) = plan {
            if !plan.is_empty() {
                if let Some((_, weights)) = self.segment_weights.iter().find(|(name, _)| name == plan) {
                    return weights;
                }
            }
        }
        &self.weights
    }
}

pub struct Component {
    pub name: &'static str,
    pub score: f64,
    pub weight: f64,
    pub contribution: f64,
}

pub struct HealthScore {
    pub score: f64,
    pub band: &'static str,
    pub churn_risk: f64,
    pub components: Vec<Component>,
    pub as_of_ms: i64,
    pub confidence: f64,
    pub changes: Vec<(String, f64)>,
    pub previous_score: Option<f64>,
    /// Cancelled at `as_of_ms` (0: not), and why.
    pub cancelled_ms: i64,
    pub cancellation_reason: Option<String>,
    pub mrr: f64,
    pub usage_growth: Option<f64>,
    pub churn_risk_horizon_days: Option<f64>,
    pub needs_fresh_pulse: bool,
}

struct ActivitySums {
    activity_7d: i64,
    activity_30d: i64,
    activity_60d: i64,
    activity_90d: i64,
    orders_30d: i64,
    orders_90d: i64,
    failed_payments_30d: i64,
}

fn activity_sums(state: &CustomerState, at_ms: i64) -> ActivitySums {
    let counts = &state.counts;
    let days = &counts.days;
    let today = at_ms.div_euclid(DAY_MS);
    let end = days.partition_point(|day| *day <= today);
    let start = days[..end].partition_point(|day| *day < today - 89);
    let mut sums = ActivitySums { activity_7d: 0, activity_30d: 0, activity_60d: 0, activity_90d: 0, orders_30d: 0, orders_90d: 0, failed_payments_30d: 0 };
    for index in start..end {
        let activity = counts.columns[SESSIONS][index] + counts.columns[FEATURE_USES][index];
        let orders = counts.columns[PURCHASES][index];
        sums.activity_90d += activity;
        sums.orders_90d += orders;
        let age = today - days[index];
        if age < 60 {
            sums.activity_60d += activity;
            if age < 30 {
                sums.activity_30d += activity;
                sums.orders_30d += orders;
                sums.failed_payments_30d += counts.columns[PAYMENTS_FAILED][index];
                if age < 7 {
                    sums.activity_7d += activity;
                }
            }
        }
    }
    sums
}

/// `scoring.health.days_with_events`: days with counted events in the 90 days ending at `at_ms`.
fn days_with_events(state: &CustomerState, at_ms: i64) -> i64 {
    let days = &state.counts.days;
    let today = at_ms.div_euclid(DAY_MS);
    let end = days.partition_point(|day| *day <= today);
    let start = days[..end].partition_point(|day| *day < today - 89);
    (end - start) as i64
}

fn decay(elapsed_ms: i64, half_life_days: f64) -> f64 {
    if elapsed_ms <= 0 {
        return 1.0;
    }
    // black_box: LLVM would turn pow(0.5, x) into exp2(-x), which rounds differently.
    unsafe { pow(std::hint::black_box(0.5), elapsed_ms as f64 / (half_life_days * DAY_MS as f64)) }
}

fn usage_score(state: &CustomerState, at_ms: i64, sums: &ActivitySums, parameters: &Parameters) -> Option<f64> {
    if state.last_usage_ms == 0 {
        return None;
    }
    let recency = decay(at_ms - state.last_usage_ms, parameters.usage_half_life_days);
    let baseline_week = (sums.activity_90d - sums.activity_7d) as f64 / (83.0 / 7.0);
    let trend = if baseline_week <= 0.0 { 1.0 } else { py_min(1.0, sums.activity_7d as f64 / baseline_week) };
    let today = at_ms.div_euclid(DAY_MS);
    let (mut weekly, mut monthly) = (0i64, 0i64);
    for (_, last_day) in &state.users_last_day {
        let age = today - last_day;
        if (0..30).contains(&age) {
            monthly += 1;
            if age < 7 {
                weekly += 1;
            }
        }
    }
    let breadth = if monthly != 0 { weekly as f64 / monthly as f64 } else { 0.0 };
    let mean = if !parameters.key_features.is_empty() {
        let used = parameters
            .key_features
            .iter()
            .filter(|feature| {
                let last = state.features_last_day.iter().find(|(name, _)| name == *feature).map_or(-1_000_000_000, |(_, day)| *day);
                (0..30).contains(&(today - last))
            })
            .count();
        0.5 * trend + 0.25 * breadth + 0.25 * used as f64 / parameters.key_features.len() as f64
    } else {
        (0.5 * trend + 0.25 * breadth) / 0.75
    };
    Some(100.0 * recency * (0.3 + 0.7 * mean))
}

fn purchase_score(state: &CustomerState, at_ms: i64, sums: &ActivitySums, parameters: &Parameters) -> Option<f64> {
    if state.last_purchase_ms == 0 {
        return None;
    }
    let recency = decay(at_ms - state.last_purchase_ms, parameters.purchase_half_life_days);
    let monthly_baseline = sums.orders_90d as f64 / 3.0;
    let frequency = if monthly_baseline == 0.0 { 0.0 } else { py_min(1.0, sums.orders_30d as f64 / monthly_baseline) };
    Some(100.0 * (0.5 * recency + 0.25 * frequency) / 0.75)
}

fn support_score(state: &CustomerState, parameters: &Parameters) -> Option<f64> {
    let handled = state.tickets_resolved + state.tickets_reopened;
    if state.open_tickets.is_empty() && handled == 0 {
        return None;
    }
    let mut load = 0.0;
    for ticket in &state.open_tickets {
        load += OPEN_TICKET_PENALTY[ticket.priority as usize];
    }
    let mut slow = 0.0;
    if !state.resolution_seconds.is_empty() {
        let mut total = 0.0;
        for seconds in &state.resolution_seconds {
            total += seconds;
        }
        let mean_hours = total / state.resolution_seconds.len() as f64 / 3600.0;
        slow = 20.0 * py_min(1.0, mean_hours / (3.0 * parameters.support_target_resolution_hours));
    }
    let reopens = 20.0 * if handled != 0 { state.tickets_reopened as f64 / handled as f64 } else { 0.0 };
    Some(py_max(0.0, 100.0 - load - slow - reopens))
}

/// `scoring.health.nps_rating`.
fn nps_rating(answer: &SurveyResponse) -> f64 {
    10.0 * (answer.score - answer.scale_min) / (answer.scale_max - answer.scale_min)
}

/// `scoring.health.answer_points`: NPS by category, CLI reversed, the others linearly.
fn answer_points(answer: &SurveyResponse) -> f64 {
    if answer.survey == "nps" {
        let rating = nps_rating(answer);
        return if rating >= 9.0 { 100.0 } else if rating >= 7.0 { 50.0 } else { 0.0 };
    }
    if answer.survey == "cli" {
        return 100.0 * (answer.scale_max - answer.score) / (answer.scale_max - answer.scale_min);
    }
    100.0 * (answer.score - answer.scale_min) / (answer.scale_max - answer.scale_min)
}

/// `scoring.health.is_detractor`: NPS 0-6, or CSAT in the lowest quarter of its scale.
pub fn is_detractor(answer: &SurveyResponse) -> bool {
    match answer.survey.as_str() {
        "nps" => nps_rating(answer) < 7.0,
        "csat" => (answer.score - answer.scale_min) / (answer.scale_max - answer.scale_min) <= 0.25,
        _ => false,
    }
}

fn sentiment_score(state: &CustomerState, at_ms: i64, parameters: &Parameters) -> Option<f64> {
    let mut total = 0.25 * 50.0;
    let mut weights = 0.25;
    let mut any = false;
    for answer in state.surveys.iter().filter(|answer| answer.answered_ms <= at_ms) {
        any = true;
        let weight = decay(at_ms - answer.answered_ms, parameters.sentiment_half_life_days);
        total += weight * answer_points(answer);
        weights += weight;
    }
    for deadline in unanswered_deadlines(state, at_ms, parameters) {
        any = true;
        let weight = decay(at_ms - deadline, parameters.sentiment_half_life_days);
        total += weight * parameters.unanswered_survey_points;
        weights += weight;
    }
    if any { Some(total / weights) } else { None }
}

/// `scoring.health.survey_kind`: a CSI answer is kept as `csi.<question>`.
fn survey_kind(survey: &str) -> &str {
    survey.split('.').next().unwrap_or(survey)
}

/// `scoring.health.unanswered_deadlines`.
fn unanswered_deadlines(state: &CustomerState, at_ms: i64, parameters: &Parameters) -> Vec<i64> {
    let window = (parameters.survey_response_days * DAY_MS as f64) as i64;
    let mut deadlines = Vec::new();
    for (sent_ms, kind) in &state.survey_invites {
        let deadline = sent_ms + window;
        if deadline > at_ms {
            continue;
        }
        let answered = state.surveys.iter().any(|answer| *sent_ms <= answer.answered_ms && answer.answered_ms <= deadline && survey_kind(&answer.survey) == kind);
        if !answered {
            deadlines.push(deadline);
        }
    }
    deadlines
}

/// `scoring.health.relationship_score`.
fn relationship_score(state: &CustomerState, at_ms: i64, parameters: &Parameters) -> Option<f64> {
    let valid_pulse = state.pulse_rating > 0 && at_ms < state.pulse_expires_ms;
    if !(state.contact_ms != 0 || state.negative_contact_ms != 0 || valid_pulse) {
        return None;
    }
    let mut contact = if state.contact_ms != 0 { 100.0 * decay(at_ms - state.contact_ms, parameters.relationship_half_life_days) } else { 0.0 };
    if state.negative_contact_ms > state.contact_ms {
        contact = py_min(contact, 50.0);
    }
    if valid_pulse {
        return Some(0.5 * contact + 0.5 * 25.0 * (state.pulse_rating - 1) as f64);
    }
    Some(contact)
}

fn payment_score(state: &CustomerState, at_ms: i64, sums: &ActivitySums) -> Option<f64> {
    if !state.has_billing {
        return None;
    }
    if state.cancelled_ms != 0 && state.cancelled_ms <= at_ms {
        return Some(0.0);
    }
    let failures = py_min(60.0, 20.0 * sums.failed_payments_30d as f64);
    let mut overdue = 0.0;
    for invoice in &state.unpaid_invoices {
        if invoice.due_ms < at_ms {
            overdue += 10.0 + (at_ms - invoice.due_ms) as f64 / DAY_MS as f64;
        }
    }
    let mut contraction = 0.0;
    if state.previous_mrr > state.mrr {
        contraction = 30.0 * (state.previous_mrr - state.mrr) / state.previous_mrr;
    }
    Some(py_max(0.0, 100.0 - failures - py_min(40.0, overdue) - contraction))
}

pub fn band_for(score: f64, parameters: &Parameters) -> &'static str {
    if score >= parameters.healthy_min {
        "healthy"
    } else if score >= parameters.at_risk_min {
        "at_risk"
    } else {
        "critical"
    }
}

fn churn_risk_for(score: f64, weakest_component: f64) -> f64 {
    let z = (45.0 - score) / 10.2 + 1.5 * (1.0 - weakest_component / 100.0) - 0.75;
    1.0 / (1.0 + unsafe { exp(-z) })
}

/// Python's `round(x, digits)`: the correctly rounded decimal (ties to even), read back.
///
/// Directly when `x·10^digits` is clearly on one side of a half: its integer part, rounded,
/// divided by `10^digits` (both exact, so the division gives the double nearest the decimal,
/// as Python's parse does). Otherwise, near a tie, through the exact decimal string: the
/// product's rounding error could decide the side. The string way took about a tenth of the
/// kernel's samples in a py-spy profile; without it, 7.0-7.2 → 6.6 µs per event in
/// bench/kernel_cost.py (2026-11-30).
pub fn py_round(value: f64, digits: usize) -> f64 {
    if !value.is_finite() {
        return value;
    }
    const POWERS: [f64; 16] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
    if let Some(&scale) = POWERS.get(digits) {
        let scaled = value * scale; // within |scaled|·2^-53 of the exact product
        if scaled.abs() < 1e15 {
            let whole = scaled.floor();
            let fraction = scaled - whole; // exact near a half
            if (fraction - 0.5).abs() > scaled.abs() * f64::EPSILON * 4.0 + f64::MIN_POSITIVE {
                let rounded = (if fraction > 0.5 { whole + 1.0 } else { whole }) / scale;
                return if rounded == 0.0 { 0.0f64.copysign(value) } else { rounded };
            }
        }
    }
    format!("{value:.digits$}").parse().unwrap_or(value)
}

/// (−|change|, name) ascending, as `scoring.health._largest_first` sorts its tuples.
fn largest_first(mut changes: Vec<(String, f64)>) -> Vec<(String, f64)> {
    changes.sort_by(|a, b| (-a.1.abs()).partial_cmp(&-b.1.abs()).unwrap_or(std::cmp::Ordering::Equal).then_with(|| a.0.cmp(&b.0)));
    changes
}

/// `scoring.health._weighted_components`: the components with data as (name, score, weight),
/// their total weight and the weight of every component that counts toward confidence.
fn weighted_components(state: &CustomerState, at_ms: i64, parameters: &Parameters, sums: &ActivitySums) -> (Vec<(&'static str, f64, f64)>, f64, f64) {
    let weights = parameters.weights_for(&state.plan);
    let values = [
        usage_score(state, at_ms, sums, parameters),
        purchase_score(state, at_ms, sums, parameters),
        support_score(state, parameters),
        sentiment_score(state, at_ms, parameters),
        payment_score(state, at_ms, sums),
        relationship_score(state, at_ms, parameters),
    ];
    let mut present: Vec<(&'static str, f64, f64)> = Vec::with_capacity(6);
    let mut total_weight = 0.0;
    let mut all_weights = 0.0;
    let managed = state.contact_ms != 0 || state.negative_contact_ms != 0 || state.pulse_rating != 0;
    for (name, value) in COMPONENTS.iter().zip(values) {
        let weight = weights.iter().find(|(known, _)| known == name).map_or(0.0, |(_, weight)| *weight);
        if *name == "relationship" && !managed {
            continue; // an account no CSM has touched lacks no evidence
        }
        all_weights += weight;
        if let Some(value) = value {
            if weight > 0.0 {
                present.push((name, value, weight));
                total_weight += weight;
            }
        }
    }
    (present, total_weight, all_weights)
}

/// `scoring.health.capped`: clamped to 0-100, below healthy on thin evidence, below at-risk
/// once a cancellation takes effect.
pub fn capped(state: &CustomerState, composite: f64, at_ms: i64, parameters: &Parameters) -> f64 {
    let mut composite = py_min(100.0, py_max(0.0, composite));
    if state.active_days < parameters.healthy_min_active_days {
        composite = py_min(composite, parameters.healthy_min - 0.01);
    }
    if state.cancelled_ms != 0 && state.cancelled_ms <= at_ms {
        composite = py_min(composite, parameters.at_risk_min - 0.01);
    }
    composite
}

/// Each component with data: (name, score, share of the weight).
pub type Shares = Vec<(&'static str, f64, f64)>;

/// `scoring.health.composite_at`: each component's (name, score, share of the weight) and the
/// score as published (capped, rounded); None without data.
pub fn composite_at(state: &CustomerState, at_ms: i64, parameters: &Parameters) -> Option<(Shares, f64)> {
    let sums = activity_sums(state, at_ms);
    let (present, total_weight, _) = weighted_components(state, at_ms, parameters, &sums);
    if present.is_empty() {
        return None;
    }
    let mut composite = 0.0;
    let mut shares = Vec::with_capacity(present.len());
    for (name, value, weight) in present {
        let share = weight / total_weight;
        composite += share * value;
        shares.push((name, value, share));
    }
    Some((shares, py_round(capped(state, composite, at_ms, parameters), 2)))
}

pub fn score_state(
    state: &CustomerState,
    at_ms: i64,
    parameters: &Parameters,
    previous_contributions: Option<&[(String, f64)]>,
    previous_score: Option<f64>,
) -> Option<HealthScore> {
    let sums = activity_sums(state, at_ms);
    let (present, total_weight, all_weights) = weighted_components(state, at_ms, parameters, &sums);
    if present.is_empty() {
        return None;
    }
    let before = previous_contributions.unwrap_or(&[]);
    let mut components = Vec::with_capacity(present.len());
    let mut changes = Vec::with_capacity(present.len() + before.len());
    let mut composite = 0.0;
    let mut weakest = 100.0;
    for (name, value, weight) in present {
        let share = weight / total_weight;
        let contribution = share * value;
        composite += contribution;
        components.push(Component { name, score: value, weight: share, contribution });
        let earlier = before.iter().find(|(known, _)| known == name).map_or(0.0, |(_, contribution)| *contribution);
        changes.push((name.to_owned(), contribution - earlier));
        if value < weakest {
            weakest = value;
        }
    }
    for (name, contribution) in before {
        if !components.iter().any(|component| component.name == name) {
            changes.push((name.clone(), -contribution));
        }
    }
    composite = capped(state, composite, at_ms, parameters);
    let mut confidence = total_weight / all_weights;
    if state.active_days < parameters.healthy_min_active_days {
        confidence *= state.active_days as f64 / parameters.healthy_min_active_days as f64;
    }
    let cancelled = state.cancelled_ms != 0 && state.cancelled_ms <= at_ms;
    let before_30d = sums.activity_60d - sums.activity_30d;
    let usage_growth = if state.last_usage_ms != 0 && before_30d > 0 {
        Some(sums.activity_30d as f64 / before_30d as f64 - 1.0)
    } else {
        None
    };
    let score = py_round(composite, 2);
    let risk = match &parameters.churn_model {
        None => churn_risk_for(composite, weakest),
        Some(model) => churn_probability(model, score, &components, confidence, at_ms - state.last_event_ms, days_with_events(state, at_ms)),
    };
    Some(HealthScore {
        score,
        band: band_for(score, parameters), // the score shown (model revision 6)
        churn_risk: py_round(risk, 4),
        components,
        as_of_ms: at_ms,
        confidence,
        changes: largest_first(changes),
        previous_score,
        cancelled_ms: if cancelled { state.cancelled_ms } else { 0 },
        cancellation_reason: if cancelled { state.cancellation_reason.clone() } else { None },
        mrr: state.mrr,
        usage_growth,
        churn_risk_horizon_days: parameters.churn_model.as_ref().map(|model| model.horizon_days),
        needs_fresh_pulse: state.pulse_rating > 0 && at_ms >= state.pulse_expires_ms,
    })
}
