//! `scoring.due.next_sweep_due` without BG/NBD, statement for statement: when a silent
//! customer next needs the sweep. The sweep and the replay ask it for every customer they
//! visit; here it costs a fraction of the Python search (bench/sweep.py --due). Held equal to
//! the reference by tests/unit/test_kernel.py on generated histories.

use crate::alerts::{
    band_rank, baseline_gap_days, conditions_holding, unusual_silence, AlertParameters, HOLDS_PAYMENT_TROUBLE, HOLDS_PURCHASE_ACTIVITY,
    HOLDS_SILENCE,
};
use crate::apply::{py_max, DAY_MS};
use crate::health::{band_for, capped, composite_at, py_round, Parameters, Shares};
use crate::state::CustomerState;

/// `scoring.due.HORIZON_MS`.
const HORIZON_MS: i64 = 400 * DAY_MS;
/// `scoring.due.MAX_GUESSES`.
const MAX_GUESSES: u32 = 3;

/// The components' (name, score, share) and the published-style score at a moment (None
/// without data), and the alert conditions holding then, as bits.
type Probe = (Option<(Shares, f64)>, u8);

/// What the search needs besides the record.
pub struct Search<'a> {
    pub parameters: &'a Parameters,
    pub rules: Option<&'a AlertParameters>,
    pub min_change: f64,
    pub silence_ms: i64,
    pub ttl_ms: i64,
    pub step_ms: i64,
}

pub fn next_sweep_due(state: &CustomerState, at_ms: i64, search: &Search) -> i64 {
    let start = (at_ms + 1).max(state.last_event_ms + search.silence_ms);
    let mut limit = start + HORIZON_MS;
    if search.ttl_ms > 0 && state.last_event_ms > 0 {
        limit = limit.min(state.last_event_ms + search.ttl_ms);
    }
    if let Some((first, _, _)) = state.alert_digest.first() {
        limit = limit.min((first.div_euclid(DAY_MS) + 1) * DAY_MS);
    }
    limit = limit.max(start);
    let mut jumps: Vec<i64> = jump_moments(state, search, start).into_iter().filter(|moment| start < *moment && *moment < limit).collect();
    jumps.sort_unstable();
    jumps.dedup();
    jumps.push(limit);
    let mut segment_start = start;
    for segment_end in jumps {
        if segment_end <= segment_start {
            continue;
        }
        let first = probe(state, segment_start, search);
        if !steady(state, &first, segment_start, search) {
            return segment_start;
        }
        let last_moment = segment_end - 1;
        if last_moment > segment_start {
            let last = probe(state, last_moment, search);
            if !quiet(state, &first, &last, last_moment, search) {
                let found = last_quiet(state, &first, segment_start, last_moment, &last, search);
                return found.max(at_ms + 1);
            }
        }
        segment_start = segment_end;
    }
    limit.max(at_ms + 1)
}

/// `scoring.due._last_quiet`.
fn last_quiet(state: &CustomerState, first: &Probe, start_ms: i64, loud_ms: i64, loud_probe: &Probe, search: &Search) -> i64 {
    let step_ms = search.step_ms.max(1);
    let (mut quiet_at, mut loud_at) = (start_ms, loud_ms);
    let mut margin_quiet = margin(state, first, first, quiet_at, search);
    let mut margin_loud = margin(state, first, loud_probe, loud_at, search);
    let mut guesses = 0;
    let mut neighbour: Option<i64> = None;
    while loud_at - quiet_at > step_ms {
        let mut guessing = false;
        let middle = match neighbour {
            Some(next) if quiet_at < next && next < loud_at => next,
            _ if guesses < MAX_GUESSES && margin_quiet > 0.0 && 0.0 >= margin_loud => {
                guesses += 1;
                guessing = true;
                let fraction = margin_quiet / (margin_quiet - margin_loud);
                (quiet_at + ((loud_at - quiet_at) as f64 * fraction) as i64).max(quiet_at + 1).min(loud_at - 1)
            }
            _ => (quiet_at + loud_at).div_euclid(2),
        };
        let probed = probe(state, middle, search);
        let found = margin(state, first, &probed, middle, search);
        if quiet(state, first, &probed, middle, search) {
            quiet_at = middle;
            margin_quiet = found;
            neighbour = if guessing { Some(middle + step_ms.div_euclid(2)) } else { None };
        } else {
            loud_at = middle;
            margin_loud = found;
            neighbour = if guessing { Some(middle - step_ms.div_euclid(2)) } else { None };
        }
    }
    quiet_at
}

fn probe(state: &CustomerState, at_ms: i64, search: &Search) -> Probe {
    let composite = composite_at(state, at_ms, search.parameters);
    let holding = match (search.rules, &composite) {
        (Some(rules), Some(_)) => conditions_holding(state, at_ms, rules),
        _ => 0,
    };
    (composite, holding)
}

/// `scoring.due._steady`.
fn steady(state: &CustomerState, probe: &Probe, at_ms: i64, search: &Search) -> bool {
    match &probe.0 {
        None => state.published.is_none(),
        Some((_, score)) => within(state, *score, *score, at_ms, search) && episodes_agree(state, probe.1, at_ms, search.rules),
    }
}

/// `scoring.due._bounds`.
fn bounds(state: &CustomerState, first: &Probe, last: &Probe, end_ms: i64, parameters: &Parameters) -> Option<(f64, f64)> {
    let (Some((a, _)), Some((b, _))) = (&first.0, &last.0) else {
        return None;
    };
    if a.len() != b.len() || a.iter().zip(b).any(|(one, other)| one.0 != other.0) {
        return None;
    }
    let (mut low, mut high) = (0.0, 0.0);
    for ((_, score, share), (_, other, _)) in a.iter().zip(b) {
        low += share * if *other < *score { *other } else { *score };
        high += share * if *other > *score { *other } else { *score };
    }
    Some((capped(state, low, end_ms, parameters), capped(state, high, end_ms, parameters)))
}

/// `scoring.due._quiet`.
fn quiet(state: &CustomerState, first: &Probe, last: &Probe, end_ms: i64, search: &Search) -> bool {
    if first.0.is_none() || last.0.is_none() {
        return first.0.is_none() && last.0.is_none() && state.published.is_none();
    }
    let Some((low, high)) = bounds(state, first, last, end_ms, search.parameters) else {
        return false;
    };
    if first.1 != last.1 {
        return false;
    }
    within(state, low, high, end_ms, search) && episodes_agree(state, last.1, end_ms, search.rules)
}

/// `scoring.due._margin`.
fn margin(state: &CustomerState, first: &Probe, last: &Probe, end_ms: i64, search: &Search) -> f64 {
    let (Some(published), Some((low, high))) = (&state.published, bounds(state, first, last, end_ms, search.parameters)) else {
        return f64::NAN; // no guess: every comparison with it is false
    };
    let (floor, ceiling) = band_edges(&published.band, search.parameters);
    let drift = py_max((low - published.score).abs(), (high - published.score).abs());
    let mut smallest = search.min_change - drift;
    for other in [low - floor, ceiling - high] {
        if other < smallest {
            smallest = other;
        }
    }
    smallest
}

fn band_edges(band: &str, parameters: &Parameters) -> (f64, f64) {
    match band {
        "healthy" => (parameters.healthy_min, 1e9),
        "at_risk" => (parameters.at_risk_min, parameters.healthy_min),
        _ => (-1e9, parameters.at_risk_min),
    }
}

/// `scoring.due._within`.
fn within(state: &CustomerState, low: f64, high: f64, at_ms: i64, search: &Search) -> bool {
    let Some(published) = &state.published else {
        return false;
    };
    let parameters = search.parameters;
    let (low, high) = (py_round(low, 2), py_round(high, 2));
    let band = band_for(low, parameters);
    if band != published.band || band_for(high, parameters) != band {
        return false;
    }
    if py_max((low - published.score).abs(), (high - published.score).abs()) >= search.min_change {
        return false;
    }
    let Some(rules) = search.rules.filter(|rules| rules.band_downgrade) else {
        return true;
    };
    let Some(alert_band) = &state.alert_band else {
        return false; // a sweep would set it
    };
    if band_rank(band_for(high - rules.hysteresis_points, parameters)) < band_rank(alert_band) {
        return false; // the score clears the band edge by the hysteresis: the alert band moves up
    }
    if band_rank(band) > band_rank(alert_band) {
        return unusual_silence(state, at_ms, rules, rules.time_band_gap_multiplier).is_none();
    }
    true
}

/// `scoring.due._episodes_agree`.
fn episodes_agree(state: &CustomerState, holding: u8, at_ms: i64, rules: Option<&AlertParameters>) -> bool {
    let Some(rules) = rules else {
        return true;
    };
    let open = |rule: &str| state.alert_episodes.iter().any(|(name, _)| name == rule);
    for (enabled, bit, rule) in [
        (rules.purchase_activity, HOLDS_PURCHASE_ACTIVITY, "purchase_activity"),
        (rules.payment_trouble, HOLDS_PAYMENT_TROUBLE, "payment_trouble"),
        (rules.silence, HOLDS_SILENCE, "silence"),
    ] {
        if enabled && (holding & bit != 0) != open(rule) {
            return false;
        }
    }
    let cancelled = state.cancelled_ms;
    if rules.cancellation && cancelled != 0 && cancelled <= at_ms {
        let alerted = state.alert_episodes.iter().find(|(name, _)| name == "cancellation").map(|(_, at)| *at);
        if alerted != Some(cancelled) {
            return false;
        }
    }
    true
}

/// `scoring.due._jump_moments`.
fn jump_moments(state: &CustomerState, search: &Search, after_ms: i64) -> Vec<i64> {
    let response_ms = (search.parameters.survey_response_days * DAY_MS as f64) as i64;
    let mut moments = Vec::with_capacity(32);
    for moment in [state.cancelled_ms, state.pulse_expires_ms] {
        if moment != 0 {
            moments.push(moment);
        }
    }
    moments.extend(state.surveys.iter().map(|response| response.answered_ms));
    moments.extend(state.survey_invites.iter().map(|(sent_ms, _)| sent_ms + response_ms));
    for invoice in &state.unpaid_invoices {
        moments.push(invoice.due_ms + 1);
        if let Some(rules) = search.rules {
            moments.push(invoice.due_ms + (rules.payment_overdue_days * DAY_MS as f64) as i64 + 1);
        }
    }
    let counts = &state.counts;
    let days = &counts.days;
    let from = after_ms.div_euclid(DAY_MS) - 89;
    let first = days.partition_point(|day| *day < from);
    for (index, &day) in days.iter().enumerate().skip(first) {
        let column = |counter: usize| counts.columns[counter][index];
        if column(crate::state::SESSIONS) != 0 || column(crate::state::FEATURE_USES) != 0 {
            moments.extend([(day + 7) * DAY_MS, (day + 90) * DAY_MS]);
        }
        if column(crate::state::PURCHASES) != 0 {
            moments.extend([(day + 30) * DAY_MS, (day + 90) * DAY_MS]);
        }
        if column(crate::state::PAYMENTS_FAILED) != 0 {
            moments.push((day + 30) * DAY_MS);
        }
    }
    for (_, day) in &state.users_last_day {
        moments.extend([(day + 7) * DAY_MS, (day + 30) * DAY_MS]);
    }
    for (_, day) in &state.features_last_day {
        moments.push((day + 30) * DAY_MS);
    }
    if let Some(rules) = search.rules {
        alert_deadlines(state, rules, &mut moments);
    }
    moments
}

/// `scoring.due._alert_deadlines`.
fn alert_deadlines(state: &CustomerState, rules: &AlertParameters, moments: &mut Vec<i64>) {
    if let Some(gap) = baseline_gap_days(state) {
        for multiplier in [rules.silence_gap_multiplier, rules.time_band_gap_multiplier] {
            moments.push(state.last_event_ms + (py_max(rules.silence_min_days, multiplier * gap) * DAY_MS as f64) as i64 + 1);
        }
    }
    if state.purchase_days >= rules.purchase_lapse_min_purchases.max(2) {
        let days = state.last_purchase_ms.div_euclid(DAY_MS) - state.first_purchase_ms.div_euclid(DAY_MS);
        let purchase_gap = days as f64 / (state.purchase_days - 1) as f64;
        let lapse_days = py_max(rules.purchase_lapse_min_days, rules.purchase_lapse_gap_multiplier * purchase_gap);
        moments.push(state.last_purchase_ms + (lapse_days * DAY_MS as f64) as i64 + 1);
    }
}
