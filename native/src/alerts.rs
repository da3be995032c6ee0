//! `scoring.alerts.evaluate` for models without BG/NBD (the purchase-activity rule is then
//! the lapse from the customer's own purchase rhythm), statement for statement.

use sha2::{Digest, Sha256};

use crate::apply::{default_scale, py_max, Data, Event, DAY_MS};
use crate::health::{band_for, is_detractor, py_round, HealthScore, Parameters};
use crate::message::{rfc3339, Json};
use crate::state::{CustomerState, SurveyResponse, PAYMENTS_FAILED};

const HOUR_MS: f64 = 3_600_000.0;
const BUDGET_WINDOW_MS: i64 = 30 * DAY_MS;
/// `scoring.alerts.DECAYING_COMPONENTS`.
const DECAYING_COMPONENTS: [&str; 4] = ["usage", "purchases", "sentiment", "relationship"];

pub struct AlertParameters {
    pub band_downgrade: bool,
    pub hysteresis_points: f64,
    pub sharp_drop: bool,
    pub sharp_drop_points: f64,
    pub sharp_drop_window_days: f64,
    /// `format(sharp_drop_window_days, "g")`, from Python: the detail text shows it so.
    pub sharp_drop_window_text: String,
    pub purchase_activity: bool,
    pub purchase_lapse_gap_multiplier: f64,
    pub purchase_lapse_min_days: f64,
    pub purchase_lapse_min_purchases: i64,
    pub payment_trouble: bool,
    pub payment_failures_30d: i64,
    pub payment_overdue_days: f64,
    pub cancellation: bool,
    pub time_band_gap_multiplier: f64,
    pub silence: bool,
    pub silence_gap_multiplier: f64,
    pub silence_min_days: f64,
    pub silence_min_active_days: i64,
    pub cooldown_hours: f64,
    pub max_alerts_per_customer_30d: i64,
    pub digest_rules: Vec<String>,
    pub detractor: bool,
    pub actions: Vec<Action>,
}

/// `scoring.alerts.Action`: severity and band `None` match any.
pub struct Action {
    pub rule: String,
    pub action: String,
    pub owner: String,
    pub due_hours: f64,
    pub severity: Option<String>,
    pub band: Option<String>,
}

/// `scoring.alerts.action_for`: the most specific match, the first of equals.
fn action_for<'a>(actions: &'a [Action], rule: &str, severity: &str, band: &str) -> Option<&'a Action> {
    let mut chosen = None;
    let mut best = -1;
    for action in actions {
        if action.rule != rule
            || action.severity.as_deref().is_some_and(|wanted| wanted != severity)
            || action.band.as_deref().is_some_and(|wanted| wanted != band)
        {
            continue;
        }
        let specificity = i32::from(action.severity.is_some()) + i32::from(action.band.is_some());
        if specificity > best {
            chosen = Some(action);
            best = specificity;
        }
    }
    chosen
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
    /// The customer's plan, for routing alerts by segment (`scoring.structs.Alert.plan`).
    pub plan: Option<String>,
    pub recommended_action: Option<String>,
    pub action_owner: Option<String>,
    pub action_due_hours: Option<f64>,
}

/// `scoring.alerts._alert`: an alert of the customer's current score, with its playbook step.
#[allow(clippy::too_many_arguments)]
fn make_alert(
    state: &CustomerState,
    health: &HealthScore,
    at_ms: i64,
    rule: &'static str,
    episode: &str,
    severity: &'static str,
    detail: String,
    reasons: &[(String, f64)],
    rules: &AlertParameters,
) -> Alert {
    let action = action_for(&rules.actions, rule, severity, health.band);
    Alert {
        alert_id: alert_id(&state.customer_id, rule, episode),
        customer_id: state.customer_id.clone(),
        rule,
        severity,
        score: health.score,
        previous_score: health.previous_score,
        band: health.band,
        churn_risk: health.churn_risk,
        reasons: reasons.to_vec(),
        occurred_at_ms: at_ms,
        detail,
        plan: state.plan.clone(),
        recommended_action: action.map(|action| action.action.clone()),
        action_owner: action.map(|action| action.owner.clone()),
        action_due_hours: action.map(|action| action.due_hours),
    }
}

/// `scoring.alerts.number_text`: 6, not 6.0; else the shortest form.
fn number_text(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        return format!("{}", value as i64);
    }
    let mut json = Json::new();
    json.float(value);
    String::from_utf8(json.bytes).unwrap_or_default()
}

/// `scoring.alerts._detractor`: one alert per detractor's answer, the event its episode.
fn detractor(event: &Event) -> Option<(&'static str, String, &'static str, String)> {
    let Data::SurveyAnswered { survey, score, scale, comment, .. } = &event.data else {
        return None;
    };
    let (low, high) = scale.or_else(|| default_scale(survey))?;
    let answer = SurveyResponse { survey: survey.clone(), score: *score, scale_min: low, scale_max: high, answered_ms: event.occurred_at_ms };
    if !is_detractor(&answer) {
        return None;
    }
    let mut detail = format!("{} answer {} on {}-{}", survey.to_uppercase(), number_text(*score), number_text(low), number_text(high));
    if let Some(comment) = comment.as_deref().filter(|text| !text.is_empty()) {
        detail.push_str(&format!(": \"{comment}\""));
    }
    Some(("detractor", event.event_id.clone(), "warning", detail))
}

/// `scoring.alerts.purchase_lapse`.
fn purchase_lapse(state: &CustomerState, at_ms: i64, rules: &AlertParameters) -> Option<(f64, f64)> {
    if state.mrr > 0.0 || state.cancelled_ms != 0 || state.purchase_days < rules.purchase_lapse_min_purchases {
        return None;
    }
    let days = state.last_purchase_ms.div_euclid(DAY_MS) - state.first_purchase_ms.div_euclid(DAY_MS);
    let gap = days as f64 / (state.purchase_days - 1) as f64;
    let silent_days = (at_ms - state.last_purchase_ms) as f64 / DAY_MS as f64;
    if silent_days > py_max(rules.purchase_lapse_min_days, rules.purchase_lapse_gap_multiplier * gap) {
        Some((silent_days, gap))
    } else {
        None
    }
}

#[derive(Default)]
pub struct AlertDecision {
    pub raised: Vec<Alert>,
    pub suppressed: Vec<(&'static str, &'static str)>,
}

pub fn band_rank(band: &str) -> u8 {
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

/// `scoring.alerts.fell_by_time`: the fall since the previous score came more from decay than from events.
fn fell_by_time(health: &HealthScore) -> bool {
    let mut decayed = 0.0;
    let mut fell = 0.0;
    for (name, change) in &health.changes {
        if *change < 0.0 {
            if DECAYING_COMPONENTS.contains(&name.as_str()) {
                decayed -= change;
            } else {
                fell -= change;
            }
        }
    }
    decayed > fell
}

/// `scoring.alerts.baseline_gap_days`.
pub fn baseline_gap_days(state: &CustomerState) -> Option<f64> {
    let last_day = state.last_event_ms.div_euclid(DAY_MS);
    let first_day = (last_day - 89).max(state.first_event_ms.div_euclid(DAY_MS));
    let days = &state.counts.days;
    let active = days.len() - days.partition_point(|day| *day < first_day);
    if active < 2 {
        return None;
    }
    Some((last_day - first_day + 1) as f64 / active as f64)
}

/// `scoring.alerts.unusual_silence`. The kernel scores at the customer's newest event, where
/// no silence is unusual; kept statement for statement all the same.
pub fn unusual_silence(state: &CustomerState, at_ms: i64, rules: &AlertParameters, multiplier: f64) -> Option<(f64, f64)> {
    let gap = baseline_gap_days(state)?;
    if state.active_days < rules.silence_min_active_days {
        return None;
    }
    let silent_days = (at_ms - state.last_event_ms) as f64 / DAY_MS as f64;
    if silent_days > py_max(rules.silence_min_days, multiplier * gap) {
        Some((silent_days, gap))
    } else {
        None
    }
}

fn severity_rank(severity: &str) -> u8 {
    if severity == "critical" {
        0
    } else {
        1
    }
}

/// (rule, severity, detail) of each lasting condition that holds now, None where it does not,
/// in the order `scoring.alerts._conditions` checks them.
/// `scoring.alerts._conditions`: a sharp drop is about events, so a sweep (`by_time`) leaves its episode as it is.
fn conditions(state: &CustomerState, health: &HealthScore, at_ms: i64, rules: &AlertParameters, by_time: bool) -> Vec<(&'static str, Option<String>)> {
    let mut found = Vec::with_capacity(4);
    if rules.sharp_drop && !by_time {
        let since = at_ms as f64 - rules.sharp_drop_window_days * DAY_MS as f64;
        let mut peak: Option<f64> = None;
        for (day_ms, score) in &state.recent_scores {
            if *day_ms as f64 >= since && peak.is_none_or(|known| *score > known) {
                peak = Some(*score);
            }
        }
        let detail = match peak {
            Some(peak) if peak - health.score >= rules.sharp_drop_points && !fell_by_time(health) => Some(format!(
                "score fell {:.1} points from {peak:.1} within {} days",
                peak - health.score,
                rules.sharp_drop_window_text
            )),
            _ => None,
        };
        found.push(("sharp_drop", detail));
    }
    if rules.purchase_activity {
        // no BG/NBD here: the customer's own purchase rhythm
        let lapse = purchase_lapse(state, at_ms, rules);
        found.push(("purchase_activity", lapse.map(|(silent_days, gap)| format!("no purchase for {silent_days:.0} days; usually every {gap:.1} days"))));
    }
    if rules.payment_trouble && !state.has_billing {
        found.push(("payment_trouble", None));
    } else if rules.payment_trouble {
        let (failures, overdue_days, failing, overdue) = payment_trouble(state, at_ms, rules);
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
        let subscribed = state.mrr > 0.0 && !(state.cancelled_ms != 0 && state.cancelled_ms <= at_ms);
        let silence = if subscribed { unusual_silence(state, at_ms, rules, rules.silence_gap_multiplier) } else { None };
        let detail = silence.map(|(silent_days, gap)| format!("no events for {silent_days:.1} days; usually every {gap:.1} days"));
        found.push(("silence", detail));
    }
    found
}

/// The failed payments of the last 30 days, the oldest unpaid invoice's days overdue, and
/// whether each reaches its threshold (`scoring.alerts._payment_trouble`).
fn payment_trouble(state: &CustomerState, at_ms: i64, rules: &AlertParameters) -> (i64, f64, bool, bool) {
    let failures = window_total(state, PAYMENTS_FAILED, at_ms, 30);
    let overdue_days = match state.unpaid_invoices.iter().map(|invoice| invoice.due_ms).min() {
        Some(due_ms) => (at_ms - due_ms) as f64 / DAY_MS as f64,
        None => 0.0,
    };
    (failures, overdue_days, failures >= rules.payment_failures_30d, overdue_days > rules.payment_overdue_days)
}

/// `scoring.alerts.conditions_holding` without BG/NBD: the lasting conditions holding at
/// `at_ms` as a sweep sees them, as bits (HOLDS_PURCHASE_ACTIVITY, …).
pub fn conditions_holding(state: &CustomerState, at_ms: i64, rules: &AlertParameters) -> u8 {
    let mut holding = 0;
    if rules.purchase_activity && purchase_lapse(state, at_ms, rules).is_some() {
        holding |= HOLDS_PURCHASE_ACTIVITY;
    }
    if rules.payment_trouble && state.has_billing {
        let (_, _, failing, overdue) = payment_trouble(state, at_ms, rules);
        if failing || overdue {
            holding |= HOLDS_PAYMENT_TROUBLE;
        }
    }
    if rules.silence {
        let subscribed = state.mrr > 0.0 && !(state.cancelled_ms != 0 && state.cancelled_ms <= at_ms);
        if subscribed && unusual_silence(state, at_ms, rules, rules.silence_gap_multiplier).is_some() {
            holding |= HOLDS_SILENCE;
        }
    }
    holding
}

pub const HOLDS_PURCHASE_ACTIVITY: u8 = 1;
pub const HOLDS_PAYMENT_TROUBLE: u8 = 2;
pub const HOLDS_SILENCE: u8 = 4;

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

/// `scoring.alerts._due_digest`: the summary of an earlier day's digest alerts.
fn due_digest(state: &mut CustomerState, health: &HealthScore, at_ms: i64, reasons: &[(String, f64)], rules: &AlertParameters) -> Option<Alert> {
    let first = state.alert_digest.first()?.0;
    if first.div_euclid(DAY_MS) >= at_ms.div_euclid(DAY_MS) {
        return None;
    }
    let day = first.div_euclid(DAY_MS);
    let items: Vec<String> = state.alert_digest.iter().map(|(_, rule, detail)| format!("{rule}: {detail}")).collect();
    let date = rfc3339(day * DAY_MS);
    let detail = format!("{} alert(s) on {}: {}", state.alert_digest.len(), &date[..10], items.join("; "));
    state.alert_digest.clear();
    Some(make_alert(state, health, at_ms, "digest", &day.to_string(), "digest", detail, reasons, rules))
}

/// `scoring.alerts.evaluate`: `event` is the event just applied (None for a sweep, which is `by_time`).
pub fn evaluate(
    state: &mut CustomerState,
    health: &HealthScore,
    at_ms: i64,
    scoring: &Parameters,
    rules: &AlertParameters,
    event: Option<&Event>,
    by_time: bool,
) -> AlertDecision {
    let mut opened: Vec<(&'static str, String, &'static str, String)> = Vec::new();
    if rules.detractor {
        opened.extend(event.and_then(detractor));
    }

    if rules.cancellation && state.cancelled_ms != 0 && state.cancelled_ms <= at_ms {
        if episode_get(&state.alert_episodes, "cancellation") != Some(state.cancelled_ms) {
            episode_set(&mut state.alert_episodes, "cancellation", state.cancelled_ms);
            let detail = match state.cancellation_reason.as_deref().filter(|reason| !reason.is_empty()) {
                Some(reason) => format!("subscription cancelled: {reason}"),
                None => "subscription cancelled".to_owned(),
            };
            opened.push(("cancellation", state.cancelled_ms.to_string(), "critical", detail));
        }
    } else if episode_get(&state.alert_episodes, "cancellation").is_some() && state.cancelled_ms == 0 {
        episode_remove(&mut state.alert_episodes, "cancellation");
    }

    if rules.band_downgrade {
        match state.alert_band.clone() {
            None => state.alert_band = Some(health.band.to_owned()),
            Some(current) => {
                if band_rank(health.band) > band_rank(&current) {
                    let time_only = by_time || fell_by_time(health);
                    let silence = if time_only { unusual_silence(state, at_ms, rules, rules.time_band_gap_multiplier) } else { None };
                    if !time_only || silence.is_some() {
                        state.alert_band = Some(health.band.to_owned());
                        let severity = if health.band == "critical" { "critical" } else { "warning" };
                        let mut detail = format!("band fell from {current} to {}", health.band);
                        if let Some((silent_days, gap)) = silence {
                            detail.push_str(&format!(": no activity for {silent_days:.0} days, usually every {gap:.1}"));
                        }
                        opened.push(("band_downgrade", format!("{}@{at_ms}", health.band), severity, detail));
                    }
                } else if band_rank(health.band) < band_rank(&current) {
                    let cleared = band_for(health.score - rules.hysteresis_points, scoring);
                    if band_rank(cleared) < band_rank(&current) {
                        state.alert_band = Some(cleared.to_owned());
                    }
                }
            }
        }
    }

    for (rule, holds) in conditions(state, health, at_ms, rules, by_time) {
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

    if !by_time {
        // the sharp-drop peak is a score at an event: a sweep changes no record it need not
        remember_score(state, health, at_ms, rules);
    }
    let mut decision = AlertDecision::default();
    let reasons: Vec<(String, f64)> = health.changes.iter().take(3).map(|(name, change)| (name.clone(), py_round(*change, 2))).collect();
    if let Some(digest) = due_digest(state, health, at_ms, &reasons, rules) {
        decision.raised.push(digest);
    }
    if opened.is_empty() && decision.raised.is_empty() {
        return decision; // as the model: `_raise` (and its pruning of alert_times) runs when a digest is due too
    }
    let cooldown_ms = rules.cooldown_hours * HOUR_MS;
    let budget = rules.max_alerts_per_customer_30d;
    if budget != 0 {
        state.alert_times.retain(|at| at_ms - at < BUDGET_WINDOW_MS);
    }
    opened.sort_by_key(|entry| severity_rank(entry.2)); // stable, as Python's sort
    for (rule, episode, severity, detail) in opened {
        // `scoring.alerts.PER_EVENT_RULES`: one alert per answer, never held back by the cooldown.
        let cooling = rule != "detractor"
            && episode_get(&state.alert_last_raised, rule).is_some_and(|last| {
                let since_last = (at_ms - last) as f64;
                0.0 <= since_last && since_last < cooldown_ms
            });
        let digested = rules.digest_rules.iter().any(|name| name == rule);
        if cooling || (!digested && budget != 0 && state.alert_times.len() as i64 >= budget) {
            decision.suppressed.push((rule, severity));
            continue;
        }
        episode_set(&mut state.alert_last_raised, rule, at_ms);
        if digested {
            state.alert_digest.push((at_ms, rule.to_owned(), detail));
            continue;
        }
        if budget != 0 {
            state.alert_times.push(at_ms);
        }
        decision.raised.push(make_alert(state, health, at_ms, rule, &episode, severity, detail, &reasons, rules));
    }
    decision
}
