//! `scoring.alerts.evaluate` for models without BG/NBD (the purchase-activity rule needs
//! its expected purchases, so it never holds here), statement for statement.

use sha2::{Digest, Sha256};

use crate::apply::{py_max, DAY_MS};
use crate::health::{band_for, py_round, HealthScore, Parameters};
use crate::state::{CustomerState, PAYMENTS_FAILED};

const HOUR_MS: f64 = 3_600_000.0;

pub struct AlertParameters {
    pub band_downgrade: bool,
    pub hysteresis_points: f64,
    pub sharp_drop: bool,
    pub sharp_drop_points: f64,
    pub sharp_drop_window_days: f64,
    /// `format(sharp_drop_window_days, "g")`, from Python: the detail text shows it so.
    pub sharp_drop_window_text: String,
    pub purchase_activity: bool,
    pub payment_trouble: bool,
    pub payment_failures_30d: i64,
    pub payment_overdue_days: f64,
    pub cancellation: bool,
    pub silence: bool,
    pub silence_gap_multiplier: f64,
    pub silence_min_days: f64,
    pub silence_min_active_days: i64,
    pub cooldown_hours: f64,
}

pub struct Alert {
    pub alert_id: String,
    pub customer_id: String,
    pub rule: &'static str,
    pub severity: &'static str,
    pub score: f64,
    pub previous_score: Option<f64>,
    pub band: &'static str,
    pub churn_risk: f64,
    pub reasons: Vec<(String, f64)>,
    pub occurred_at_ms: i64,
    pub detail: String,
}

#[derive(Default)]
pub struct AlertDecision {
    pub raised: Vec<Alert>,
    pub suppressed: Vec<(&'static str, &'static str)>,
}

fn band_rank(band: &str) -> u8 {
    match band {
        "healthy" => 0,
        "at_risk" => 1,
        _ => 2,
    }
}

fn alert_id(customer_id: &str, rule: &str, episode: &str) -> String {
    let digest = Sha256::new().chain_update(customer_id).chain_update("\x1f").chain_update(rule).chain_update("\x1f").chain_update(episode).finalize();
    let mut text = String::with_capacity(32);
    for byte in &digest[..16] {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

fn episode_get(episodes: &[(String, i64)], rule: &str) -> Option<i64> {
    episodes.iter().find(|(name, _)| name == rule).map(|(_, at)| *at)
}

fn episode_set(episodes: &mut Vec<(String, i64)>, rule: &str, at: i64) {
    match episodes.iter_mut().find(|(name, _)| name == rule) {
        Some(entry) => entry.1 = at,
        None => episodes.push((rule.to_owned(), at)),
    }
}

fn episode_remove(episodes: &mut Vec<(String, i64)>, rule: &str) {
    if let Some(index) = episodes.iter().position(|(name, _)| name == rule) {
        episodes.remove(index);
    }
}

fn window_total(state: &CustomerState, counter: usize, at_ms: i64, days: i64) -> i64 {
    let last_day = at_ms.div_euclid(DAY_MS);
    let first_day = last_day - days + 1;
    let all = &state.counts.days;
    let start = all.partition_point(|day| *day < first_day);
    let end = all.partition_point(|day| *day <= last_day);
    state.counts.columns[counter][start..end.max(start)].iter().sum()
}

/// (rule, severity, detail) of each lasting condition that holds now, None where it does not,
/// in the order `scoring.alerts._conditions` checks them.
fn conditions(state: &CustomerState, health: &HealthScore, at_ms: i64, rules: &AlertParameters) -> Vec<(&'static str, Option<String>)> {
    let mut found = Vec::with_capacity(4);
    if rules.sharp_drop {
        let since = at_ms as f64 - rules.sharp_drop_window_days * DAY_MS as f64;
        let mut peak: Option<f64> = None;
        for (day_ms, score) in &state.recent_scores {
            if *day_ms as f64 >= since && peak.is_none_or(|known| *score > known) {
                peak = Some(*score);
            }
        }
        let detail = match peak {
            Some(peak) if peak - health.score >= rules.sharp_drop_points => Some(format!(
                "score fell {:.1} points from {peak:.1} within {} days",
                peak - health.score,
                rules.sharp_drop_window_text
            )),
            _ => None,
        };
        found.push(("sharp_drop", detail));
    }
    if rules.purchase_activity {
        found.push(("purchase_activity", None)); // no BG/NBD, no expected purchases
    }
    if rules.payment_trouble && !state.has_billing {
        found.push(("payment_trouble", None));
    } else if rules.payment_trouble {
        let failures = window_total(state, PAYMENTS_FAILED, at_ms, 30);
        let overdue_days = match state.unpaid_invoices.iter().map(|invoice| invoice.due_ms).min() {
            Some(due_ms) => (at_ms - due_ms) as f64 / DAY_MS as f64,
            None => 0.0,
        };
        let failing = failures >= rules.payment_failures_30d;
        let overdue = overdue_days > rules.payment_overdue_days;
        let detail = if failing && overdue {
            Some(format!("{failures} failed payments in 30 days and an invoice {overdue_days:.0} days overdue"))
        } else if failing {
            Some(format!("{failures} failed payments in 30 days"))
        } else if overdue {
            Some(format!("an invoice {overdue_days:.0} days overdue"))
        } else {
            None
        };
        found.push(("payment_trouble", detail));
    }
    if rules.silence {
        let gap = if state.active_days >= 2 { Some(state.gap_days_mean) } else { None };
        let subscribed = state.mrr > 0.0 && !(state.cancelled_ms != 0 && state.cancelled_ms <= at_ms);
        let silent_days = (at_ms - state.last_event_ms) as f64 / DAY_MS as f64;
        let limit = py_max(rules.silence_min_days, rules.silence_gap_multiplier * gap.unwrap_or(0.0));
        let detail = match gap {
            Some(gap) if state.active_days >= rules.silence_min_active_days && subscribed && silent_days > limit => {
                Some(format!("no events for {silent_days:.1} days; usually every {gap:.1} days"))
            }
            _ => None,
        };
        found.push(("silence", detail));
    }
    found
}

fn remember_score(state: &mut CustomerState, health: &HealthScore, at_ms: i64, rules: &AlertParameters) {
    let day_start = at_ms.div_euclid(DAY_MS) * DAY_MS;
    if let Some(last) = state.recent_scores.last_mut() {
        if last.0 == day_start {
            if health.score > last.1 {
                *last = (day_start, health.score);
            }
            return;
        }
    }
    let since = at_ms as f64 - rules.sharp_drop_window_days * DAY_MS as f64;
    state.recent_scores.retain(|entry| entry.0 as f64 >= since);
    state.recent_scores.push((day_start, health.score));
    let excess = state.recent_scores.len().saturating_sub(16);
    state.recent_scores.drain(..excess);
}

pub fn evaluate(
    state: &mut CustomerState,
    health: &HealthScore,
    at_ms: i64,
    scoring: &Parameters,
    rules: &AlertParameters,
) -> AlertDecision {
    let mut opened: Vec<(&'static str, String, &'static str, String)> = Vec::new();

    if rules.cancellation && state.cancelled_ms != 0 && state.cancelled_ms <= at_ms {
        if episode_get(&state.alert_episodes, "cancellation") != Some(state.cancelled_ms) {
            episode_set(&mut state.alert_episodes, "cancellation", state.cancelled_ms);
            opened.push(("cancellation", state.cancelled_ms.to_string(), "critical", "subscription cancelled".to_owned()));
        }
    } else if episode_get(&state.alert_episodes, "cancellation").is_some() && state.cancelled_ms == 0 {
        episode_remove(&mut state.alert_episodes, "cancellation");
    }

    if rules.band_downgrade {
        match state.alert_band.clone() {
            None => state.alert_band = Some(health.band.to_owned()),
            Some(current) => {
                if band_rank(health.band) > band_rank(&current) {
                    state.alert_band = Some(health.band.to_owned());
                    let severity = if health.band == "critical" { "critical" } else { "warning" };
                    opened.push((
                        "band_downgrade",
                        format!("{}@{at_ms}", health.band),
                        severity,
                        format!("band fell from {current} to {}", health.band),
                    ));
                } else if band_rank(health.band) < band_rank(&current) {
                    let cleared = band_for(health.score - rules.hysteresis_points, scoring);
                    if band_rank(cleared) < band_rank(&current) {
                        state.alert_band = Some(cleared.to_owned());
                    }
                }
            }
        }
    }

    for (rule, holds) in conditions(state, health, at_ms, rules) {
        match holds {
            None => episode_remove(&mut state.alert_episodes, rule),
            Some(detail) => {
                if episode_get(&state.alert_episodes, rule).is_none() {
                    episode_set(&mut state.alert_episodes, rule, at_ms);
                    opened.push((rule, at_ms.to_string(), "warning", detail));
                }
            }
        }
    }

    remember_score(state, health, at_ms, rules);
    let mut decision = AlertDecision::default();
    if opened.is_empty() {
        return decision;
    }
    let cooldown_ms = rules.cooldown_hours * HOUR_MS;
    let reasons: Vec<(String, f64)> = health.changes.iter().take(3).map(|(name, change)| (name.clone(), py_round(*change, 2))).collect();
    for (rule, episode, severity, detail) in opened {
        if let Some(last) = episode_get(&state.alert_last_raised, rule) {
            let since_last = (at_ms - last) as f64;
            if 0.0 <= since_last && since_last < cooldown_ms {
                decision.suppressed.push((rule, severity));
                continue;
            }
        }
        episode_set(&mut state.alert_last_raised, rule, at_ms);
        decision.raised.push(Alert {
            alert_id: alert_id(&state.customer_id, rule, &episode),
            customer_id: state.customer_id.clone(),
            rule,
            severity,
            score: health.score,
            previous_score: health.previous_score,
            band: health.band,
            churn_risk: health.churn_risk,
            reasons: reasons.clone(),
            occurred_at_ms: at_ms,
            detail,
        });
    }
    decision
}
