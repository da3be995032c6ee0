//! `scoring.state.apply_event`, statement for statement.

use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::state::*;

pub const DAY_MS: i64 = 86_400_000;
pub const WINDOW_DAYS: i64 = 90;
const PRIORITIES: [&str; 4] = ["low", "normal", "high", "urgent"];
const MAX_USERS: usize = 64;
const MAX_FEATURES: usize = 48;
const MAX_CATEGORIES: usize = 24;
const MAX_OPEN_TICKETS: usize = 32;
const MAX_RESOLUTIONS: usize = 16;
const MAX_SURVEYS: usize = 12;
const MAX_INVITES: usize = 12;
const MAX_MRR_CHANGES: usize = 8;
/// `scoring.contract.PULSE_VALID_DAYS`.
const PULSE_VALID_DAYS: i64 = 90;
const MAX_INVOICES: usize = 24;
const FINGERPRINT_BYTES: usize = 8;
/// `scoring.state.COUNTER_MAX`: a day counter saturates here.
const COUNTER_MAX: i64 = 9_007_199_254_740_991;

pub struct Item {
    pub category: Option<String>,
}

/// An event's payload, as `scoring.contract` accepted it (only what applying reads).
pub enum Data {
    PurchaseCompleted { amount: f64, items: Vec<Item> },
    PurchaseRefunded { amount: f64 },
    CheckoutAbandoned,
    UsageSession { user_id: String },
    UsageFeature { user_id: String, feature: String, count: i64 },
    TicketOpened { ticket_id: String, priority: String },
    TicketResolved { ticket_id: String },
    TicketReopened { ticket_id: String },
    SurveyAnswered { survey: String, score: f64, scale: Option<(f64, f64)>, comment: Option<String>, question: Option<String> },
    InvoiceIssued { invoice_id: String, amount: f64, due_ms: i64 },
    PaymentSucceeded { invoice_id: String },
    PaymentFailed,
    SubscriptionUpdated { mrr: f64, plan: Option<String> },
    SubscriptionCancelled { reason: Option<String> },
    SurveySent { survey: String },
    CsmTouchpoint { negative: bool },
    /// `expires_ms`: as `scoring.state.pulse_expiry_ms` reads it (None: PULSE_VALID_DAYS after it was given).
    CsmPulse { rating: i64, reasons: Vec<String>, expires_ms: Option<i64> },
    /// 0 sent, 1 opened, 2 clicked, 3 unsubscribed.
    Email { action: usize },
}

pub struct Event {
    pub event_id: String,
    pub occurred_at_ms: i64,
    pub data: Data,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Late,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Late => "late",
        }
    }
}

/// The default scale of each survey (`scoring.contract.DEFAULT_SURVEY_SCALES`).
pub fn default_scale(survey: &str) -> Option<(f64, f64)> {
    match survey {
        "nps" => Some((0.0, 10.0)),
        "csat" => Some((1.0, 5.0)),
        "ces" => Some((1.0, 7.0)),
        "cli" => Some((1.0, 6.0)),
        "csi" => Some((0.0, 1.0)),
        _ => None,
    }
}

/// Python's `round(x)` of a float to an int: ties to even.
fn round_to_int(value: f64) -> i64 {
    value.round_ties_even() as i64
}

fn add_count(counts: &mut DayCounts, day: i64, counter: usize, amount: i64) -> i64 {
    let days = &mut counts.days;
    let index = if days.last() == Some(&day) {
        days.len() - 1
    } else {
        let index = days.partition_point(|known| *known < day);
        if index == days.len() || days[index] != day {
            days.insert(index, day);
            for column in counts.columns.iter_mut() {
                column.insert(index, 0);
            }
        }
        index
    };
    let column = &mut counts.columns[counter];
    let before = column[index];
    column[index] = before.saturating_add(amount).min(COUNTER_MAX);
    before
}

fn drop_days_before(counts: &mut DayCounts, day: i64) {
    let cut = counts.days.partition_point(|known| *known < day);
    if cut > 0 {
        counts.days.drain(..cut);
        for column in counts.columns.iter_mut() {
            column.drain(..cut);
        }
    }
}

pub fn event_fingerprint(event_id: &str) -> [u8; FINGERPRINT_BYTES] {
    let mut hasher = Blake2bVar::new(FINGERPRINT_BYTES).expect("8 bytes is a valid BLAKE2b size");
    hasher.update(event_id.as_bytes());
    let mut digest = [0u8; FINGERPRINT_BYTES];
    hasher.finalize_variable(&mut digest).expect("the buffer has the digest's size");
    digest
}

/// `scoring.state.user_fingerprint`: the first 4 bytes of HMAC-SHA256(key, user id), big-endian.
fn user_fingerprint(key: &[u8], user_id: &str) -> i64 {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    Mac::update(&mut mac, user_id.as_bytes());
    let digest = mac.finalize().into_bytes();
    i64::from(u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]))
}

fn seen(applied: &[u8], fingerprint: &[u8; FINGERPRINT_BYTES]) -> bool {
    // bytes.find from each position, keeping only aligned matches, as scoring.state._seen does.
    let mut start = 0;
    while start + FINGERPRINT_BYTES <= applied.len() {
        match applied[start..].windows(FINGERPRINT_BYTES).position(|window| window == fingerprint) {
            None => return false,
            Some(found) => {
                let position = start + found;
                if position % FINGERPRINT_BYTES == 0 {
                    return true;
                }
                start = position + 1;
            }
        }
    }
    false
}

/// `mapping[key] = day` unless it knew a later day; then drops the least recent key over the cap
/// (`min` by value: the first of equals in insertion order).
fn remember_last_day<K: PartialEq>(mapping: &mut Vec<(K, i64)>, key: K, day: i64, cap: usize) {
    match mapping.iter_mut().find(|(known, _)| *known == key) {
        Some(entry) => {
            if entry.1 < day {
                entry.1 = day;
            }
        }
        None => mapping.push((key, day)),
    }
    if mapping.len() > cap {
        let mut oldest = 0;
        for (index, entry) in mapping.iter().enumerate() {
            if entry.1 < mapping[oldest].1 {
                oldest = index;
            }
        }
        mapping.remove(oldest);
    }
}

fn keep_last<T>(values: &mut Vec<T>, count: usize) {
    if values.len() > count {
        values.drain(..values.len() - count);
    }
}

/// `scoring.state._open_ticket`: `ticket.opened` for a ticket already open changes its priority.
fn open_ticket(state: &mut CustomerState, ticket_id: &str, at: i64, priority: i64, reprioritize: bool) {
    if let Some(ticket) = state.open_tickets.iter_mut().find(|ticket| ticket.ticket_id == ticket_id) {
        if reprioritize {
            ticket.priority = priority;
        }
        return;
    }
    state.open_tickets.push(OpenTicket { ticket_id: ticket_id.to_owned(), opened_ms: at, priority });
    keep_last(&mut state.open_tickets, MAX_OPEN_TICKETS);
}

/// `scoring.state._note_mrr`: the changes sorted as Python sorts (time, MRR) tuples.
fn note_mrr(state: &mut CustomerState, at: i64, mrr: f64) {
    state.mrr_changes.push((at, mrr));
    state.mrr_changes.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal)));
    keep_last(&mut state.mrr_changes, MAX_MRR_CHANGES);
}

/// `scoring.state._apply_email`: per-day counts of e-mails sent, opened and clicked over the
/// 90 days up to the latest e-mail day, and the latest unsubscription.
fn apply_email(state: &mut CustomerState, action: usize, at: i64) {
    if action == 3 {
        state.email_unsubscribed_ms = state.email_unsubscribed_ms.max(at);
        return;
    }
    let day = at.div_euclid(DAY_MS);
    let latest = state.email_days.iter().map(|entry| entry.0).max().unwrap_or(day).max(day);
    if day <= latest - WINDOW_DAYS {
        return;
    }
    match state.email_days.iter_mut().find(|entry| entry.0 == day) {
        Some(entry) => bump_email(entry, action),
        None => {
            let mut entry = (day, 0, 0, 0);
            bump_email(&mut entry, action);
            state.email_days.push(entry);
            state.email_days.sort();
        }
    }
    state.email_days.retain(|entry| entry.0 > latest - WINDOW_DAYS);
}

fn bump_email(entry: &mut (i64, i64, i64, i64), action: usize) {
    let count = match action {
        0 => &mut entry.1,
        1 => &mut entry.2,
        _ => &mut entry.3,
    };
    *count = (*count + 1).min(COUNTER_MAX);
}

/// `source` is (index of the input stream in `TopicKind`, partition, offset).
pub fn apply_event(
    state: &mut CustomerState,
    event: &Event,
    dedup_capacity: usize,
    source: Option<(usize, i64, i64)>,
    user_key: &[u8],
) -> Outcome {
    if let Some((stream, partition, offset)) = source {
        if partition != state.source_partition {
            state.source_partition = partition;
            state.source_offsets = vec![-1, -1, -1, -1];
        } else if offset <= state.source_offsets[stream] {
            return Outcome::Duplicate;
        }
        state.source_offsets[stream] = offset;
    }
    let fingerprint = event_fingerprint(&event.event_id);
    if seen(&state.applied_ids, &fingerprint) {
        return Outcome::Duplicate;
    }
    let at = event.occurred_at_ms;
    if state.last_event_ms != 0 && at <= state.last_event_ms - WINDOW_DAYS * DAY_MS {
        return Outcome::Late;
    }

    state.applied_ids.extend_from_slice(&fingerprint);
    keep_last(&mut state.applied_ids, dedup_capacity * FINGERPRINT_BYTES);
    state.events_applied += 1;
    // The company's own acts, not the customer's: they leave its activity (and silence) alone.
    match &event.data {
        Data::SurveySent { survey } => {
            state.survey_invites.push((at, survey.clone()));
            state.survey_invites.sort();
            keep_last(&mut state.survey_invites, MAX_INVITES);
            return Outcome::Applied;
        }
        Data::Email { action } => {
            apply_email(state, *action, at);
            return Outcome::Applied;
        }
        Data::CsmPulse { rating, reasons, expires_ms } => {
            if at > state.pulse_at_ms || (at == state.pulse_at_ms && *rating < state.pulse_rating) {
                state.pulse_rating = *rating;
                state.pulse_at_ms = at;
                state.pulse_expires_ms = expires_ms.unwrap_or(at + PULSE_VALID_DAYS * DAY_MS);
                state.pulse_reasons = reasons.clone();
            }
            return Outcome::Applied;
        }
        _ => {}
    }
    let day = at.div_euclid(DAY_MS);
    let last_day = state.last_event_ms.div_euclid(DAY_MS);
    if state.active_days == 0 {
        state.active_days = 1;
    } else if day > last_day {
        let gap = (day - last_day) as f64;
        state.active_days += 1;
        state.gap_days_mean = if state.active_days == 2 { gap } else { 0.7 * state.gap_days_mean + 0.3 * gap };
    }
    if state.first_event_ms == 0 || at < state.first_event_ms {
        state.first_event_ms = at;
    }
    if at > state.last_event_ms {
        state.last_event_ms = at;
    }

    match &event.data {
        Data::UsageSession { user_id } => {
            add_count(&mut state.counts, day, SESSIONS, 1);
            remember_last_day(&mut state.users_last_day, user_fingerprint(user_key, user_id), day, MAX_USERS);
            state.last_usage_ms = state.last_usage_ms.max(at);
        }
        Data::UsageFeature { user_id, feature, count } => {
            add_count(&mut state.counts, day, FEATURE_USES, *count);
            remember_last_day(&mut state.users_last_day, user_fingerprint(user_key, user_id), day, MAX_USERS);
            remember_last_day(&mut state.features_last_day, feature.clone(), day, MAX_FEATURES);
            state.last_usage_ms = state.last_usage_ms.max(at);
        }
        Data::PurchaseCompleted { amount, items } => {
            if add_count(&mut state.counts, day, PURCHASES, 1) == 0 {
                state.purchase_days += 1;
            }
            add_count(&mut state.counts, day, REVENUE_CENTS, round_to_int(amount * 100.0));
            if state.first_purchase_ms == 0 || at < state.first_purchase_ms {
                state.first_purchase_ms = at;
            }
            state.last_purchase_ms = state.last_purchase_ms.max(at);
            for item in items {
                if let Some(category) = &item.category {
                    if !category.is_empty() {
                        note_category(state, category, at);
                    }
                }
            }
        }
        Data::PurchaseRefunded { amount } => {
            add_count(&mut state.counts, day, REFUNDS_CENTS, round_to_int(amount * 100.0));
        }
        Data::CheckoutAbandoned => {
            add_count(&mut state.counts, day, ABANDONED_CHECKOUTS, 1);
        }
        Data::TicketOpened { ticket_id, priority } => {
            add_count(&mut state.counts, day, TICKETS_OPENED, 1);
            let rank = PRIORITIES.iter().position(|known| known == priority).unwrap_or(1) as i64;
            open_ticket(state, ticket_id, at, rank, true);
        }
        Data::TicketResolved { ticket_id } => {
            if let Some(index) = state.open_tickets.iter().position(|ticket| &ticket.ticket_id == ticket_id) {
                let ticket = state.open_tickets.remove(index);
                state.tickets_resolved += 1;
                state.resolution_seconds.push(py_max(0.0, (at - ticket.opened_ms) as f64 / 1000.0));
                keep_last(&mut state.resolution_seconds, MAX_RESOLUTIONS);
                state.resolution_days.push(day);
                keep_last(&mut state.resolution_days, MAX_RESOLUTIONS);
            }
        }
        Data::TicketReopened { ticket_id } => {
            state.tickets_reopened += 1;
            open_ticket(state, ticket_id, at, 1, false);
        }
        Data::SurveyAnswered { survey, score, scale, question, .. } => {
            let (low, high) = scale.or_else(|| default_scale(survey)).unwrap_or((0.0, 10.0));
            // A CSI answer is kept with its question ("csi.recommend"): the index needs all three.
            let kind = if survey == "csi" { format!("csi.{}", question.as_deref().unwrap_or_default()) } else { survey.clone() };
            state.surveys.push(SurveyResponse { survey: kind, score: *score, scale_min: low, scale_max: high, answered_ms: at });
            state.surveys.sort_by_key(|response| response.answered_ms);
            keep_last(&mut state.surveys, MAX_SURVEYS);
        }
        Data::InvoiceIssued { invoice_id, amount, due_ms } => {
            state.has_billing = true;
            state.unpaid_invoices.retain(|invoice| &invoice.invoice_id != invoice_id);
            state.unpaid_invoices.push(UnpaidInvoice { invoice_id: invoice_id.clone(), amount: *amount, due_ms: *due_ms });
            keep_last(&mut state.unpaid_invoices, MAX_INVOICES);
        }
        Data::PaymentSucceeded { invoice_id } => {
            state.has_billing = true;
            state.unpaid_invoices.retain(|invoice| &invoice.invoice_id != invoice_id);
        }
        Data::PaymentFailed => {
            state.has_billing = true;
            add_count(&mut state.counts, day, PAYMENTS_FAILED, 1);
        }
        Data::SubscriptionUpdated { mrr, plan } => {
            state.has_billing = true;
            if let Some(plan) = plan {
                if !plan.is_empty() {
                    state.plan = Some(plan.clone());
                }
            }
            if *mrr != state.mrr {
                state.previous_mrr = state.mrr;
                state.mrr = *mrr;
            }
            if state.cancelled_ms != 0 && at > state.cancelled_ms {
                state.cancelled_ms = 0;
                state.cancellation_reason = None;
            }
            note_mrr(state, at, *mrr);
        }
        Data::SubscriptionCancelled { reason } => {
            state.has_billing = true;
            if at >= state.cancelled_ms {
                state.cancellation_reason = reason.clone().filter(|text| !text.is_empty());
            }
            state.cancelled_ms = state.cancelled_ms.max(at);
            note_mrr(state, at, 0.0);
        }
        Data::CsmTouchpoint { negative } => {
            if *negative {
                state.negative_contact_ms = state.negative_contact_ms.max(at);
            } else {
                if at >= state.contact_ms {
                    state.contact_score = state.published.as_ref().map_or(-1.0, |published| published.score);
                }
                state.contact_ms = state.contact_ms.max(at);
            }
        }
        Data::SurveySent { .. } | Data::CsmPulse { .. } | Data::Email { .. } => {} // applied above
    }
    let cut = state.last_event_ms.div_euclid(DAY_MS) - WINDOW_DAYS + 1;
    drop_days_before(&mut state.counts, cut);
    Outcome::Applied
}

/// Python's `max(a, b)` of floats: `a` unless `b` is greater.
pub fn py_max(a: f64, b: f64) -> f64 {
    if b > a { b } else { a }
}

/// Python's `min(a, b)` of floats: `a` unless `b` is less.
pub fn py_min(a: f64, b: f64) -> f64 {
    if b < a { b } else { a }
}

/// A category bought at `at`: kept (up to MAX_CATEGORIES) with its earliest purchase time,
/// whatever order the purchases arrive in (`scoring.state._note_category`).
fn note_category(state: &mut CustomerState, category: &str, at: i64) {
    while state.category_first_ms.len() < state.categories.len() {
        state.category_first_ms.push(0);
    }
    if let Some(index) = state.categories.iter().position(|known| known == category) {
        if state.category_first_ms[index] > at {
            state.category_first_ms[index] = at;
        }
    } else if state.categories.len() < MAX_CATEGORIES {
        state.categories.push(category.to_string());
        state.category_first_ms.push(at);
    }
}
