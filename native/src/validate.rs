//! `scoring.contract.decode_event` for the events it accepts, and only those.
//!
//! The kernel accepts a message only when it is sure the contract accepts it and reads
//! it the same way; anything unusual (a missing or null `data`, a timestamp string in a
//! form other than `YYYY-MM-DDTHH:MM:SS[.f]` with `Z` or `±HH:MM`, a number out of
//! range, duplicate keys, any refusal) is left to `scoring.contract`, which also names
//! the reason for the dead-letter topic. Declining costs a second parse, never a wrong
//! answer: tests/unit/test_kernel.py holds the kernel to this on valid, broken and odd
//! messages.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::apply::{default_scale, Data, Event, Item};

/// 2000-01-01T00:00:00Z: earlier timestamps are refused as a unit mistake.
const EARLIEST_MS: i64 = 946_684_800_000;
// The contract's bounds (`scoring.contract`, docs/events.md "Bounds"): beyond any of them
// the kernel declines, and the contract names the reason (`out_of_range`, `too_long`).
const LATEST_MS: i64 = 4_102_444_800_000;
const MAX_TEXT: usize = 256;
/// `scoring.contract.MAX_COMMENT`: characters of a survey answer's comment.
const MAX_COMMENT: usize = 1_000;
const MAX_MONEY: f64 = 1_000_000_000.0;
const MAX_QUANTITY: i64 = 1_000_000;
const MAX_ITEMS: usize = 1_000;
const MAX_DURATION_SECONDS: f64 = 2_592_000.0;
const MAX_SURVEY_SCALE: f64 = 1_000_000.0;

/// `occurred_at` or `due_at`: epoch milliseconds or an RFC 3339 string.
enum Timestamp {
    Millis(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TimestampVisitor;
        impl Visitor<'_> for TimestampVisitor {
            type Value = Timestamp;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("epoch milliseconds or an RFC 3339 string")
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Timestamp, E> {
                Ok(Timestamp::Millis(value))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Timestamp, E> {
                i64::try_from(value).map(Timestamp::Millis).map_err(|_| E::custom("out of range"))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Timestamp, E> {
                Ok(Timestamp::Text(value.to_owned()))
            }
        }
        deserializer.deserialize_any(TimestampVisitor)
    }
}

fn digits(text: &[u8]) -> Option<i64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0i64, |value, digit| value * 10 + i64::from(digit - b'0')))
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|±HH:MM)` as milliseconds the way
/// `scoring.contract.parse_timestamp_ms` computes them (`int(datetime.timestamp() * 1000)`,
/// through a float); None for any other form, valid or not.
fn rfc3339_ms(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || bytes[4] != b'-' || bytes[7] != b'-' || bytes[10] != b'T' || bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(&bytes[0..4])?, digits(&bytes[5..7])?, digits(&bytes[8..10])?);
    let (hour, minute, second) = (digits(&bytes[11..13])?, digits(&bytes[14..16])?, digits(&bytes[17..19])?);
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &bytes[19..];
    let mut microseconds = 0;
    if rest.first() == Some(&b'.') {
        let length = rest[1..].iter().take_while(|byte| byte.is_ascii_digit()).count();
        if !(1..=6).contains(&length) {
            return None;
        }
        microseconds = digits(&rest[1..1 + length])? * 10i64.pow(6 - length as u32);
        rest = &rest[1 + length..];
    }
    let offset_seconds = match rest {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (hours, minutes) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = hours * 3600 + minutes * 60;
            if *sign == b'-' { -seconds } else { seconds }
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    let total_microseconds = seconds * 1_000_000 + microseconds;
    // timedelta.total_seconds(): the exact microseconds over 10**6, correctly rounded
    // (both are exact doubles below 2**53), then * 1000 and int() truncating.
    let timestamp = total_microseconds as f64 / 1e6;
    Some((timestamp * 1000.0) as i64)
}

fn timestamp_ms(value: &Timestamp) -> Option<i64> {
    let millis = match value {
        Timestamp::Millis(millis) => *millis,
        Timestamp::Text(text) => rfc3339_ms(text)?,
    };
    (EARLIEST_MS..LATEST_MS).contains(&millis).then_some(millis)
}

/// `Text`: at most 256 characters.
fn short(text: &str) -> bool {
    text.len() <= MAX_TEXT || text.chars().count() <= MAX_TEXT
}

/// An optional `Text`.
fn short_or_none(text: &Option<String>) -> bool {
    text.as_deref().is_none_or(short)
}

/// `NonEmpty`: 1 to 256 characters.
fn non_empty(text: &str) -> bool {
    !text.is_empty() && short(text)
}

/// `Money`: 0 to `MAX_MONEY`.
fn money(value: f64) -> bool {
    value.is_finite() && (0.0..=MAX_MONEY).contains(&value)
}

fn quantity(value: i64) -> bool {
    (1..=MAX_QUANTITY).contains(&value)
}

fn survey_number(value: f64) -> bool {
    value.is_finite() && (-MAX_SURVEY_SCALE..=MAX_SURVEY_SCALE).contains(&value)
}

#[derive(Deserialize)]
struct Envelope<'a> {
    event_id: String,
    #[serde(rename = "type")]
    kind: &'a str,
    customer_id: String,
    occurred_at: Timestamp,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ItemData {
    sku: String,
    quantity: i64,
    unit_price: f64,
    #[serde(default)]
    category: Option<String>,
}

#[derive(Deserialize)]
struct PurchaseCompletedData<'a> {
    order_id: String,
    amount: f64,
    currency: String,
    #[serde(borrow, default)]
    items: Vec<&'a RawValue>, // each read by `parse`, as an object
}

#[derive(Deserialize)]
struct OrderAmountData {
    order_id: String,
    amount: f64,
}

#[derive(Deserialize)]
struct CheckoutAbandonedData {
    #[serde(default)]
    cart_value: Option<f64>,
}

#[derive(Deserialize)]
struct UsageSessionData {
    user_id: String,
    duration_seconds: f64,
}

fn one() -> i64 {
    1
}

#[derive(Deserialize)]
struct UsageFeatureData {
    user_id: String,
    feature: String,
    #[serde(default = "one")]
    count: i64,
}

#[derive(Deserialize)]
struct TicketOpenedData {
    ticket_id: String,
    priority: String,
}

#[derive(Deserialize)]
struct TicketData {
    ticket_id: String,
}

#[derive(Deserialize)]
struct SurveyAnsweredData {
    survey: String,
    score: f64,
    #[serde(default)]
    scale: Option<(f64, f64)>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    question: Option<String>,
    #[serde(default)]
    touchpoint: Option<String>,
}

/// `scoring.contract.CSI_QUESTIONS`.
const CSI_QUESTIONS: [&str; 3] = ["satisfied", "buy_again", "recommend"];

#[derive(Deserialize)]
struct InvoiceIssuedData {
    invoice_id: String,
    amount: f64,
    due_at: Timestamp,
}

#[derive(Deserialize)]
struct PaymentSucceededData {
    invoice_id: String,
    amount: f64,
}

#[derive(Deserialize)]
struct PaymentFailedData {
    invoice_id: String,
    amount: f64,
    #[serde(default)]
    reason: Option<String>, // validated only: a reason that is not a string, or too long, is refused
}

#[derive(Deserialize)]
struct SubscriptionUpdatedData {
    mrr: f64,
    #[serde(default)]
    plan: Option<String>,
}

#[derive(Deserialize)]
struct SubscriptionCancelledData {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct SurveySentData {
    survey: String,
    #[serde(default)]
    touchpoint: Option<String>,
}

#[derive(Deserialize)]
struct CsmTouchpointData {
    channel: String,
    #[serde(default)]
    sentiment: Option<String>,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    csm: Option<String>,
}

#[derive(Deserialize)]
struct CsmPulseData {
    rating: i64,
    #[serde(default)]
    reasons: Vec<String>,
    #[serde(default)]
    expires_at: Option<Timestamp>,
    #[serde(default)]
    csm: Option<String>,
}

#[derive(Deserialize)]
struct EmailData {
    #[serde(default)]
    campaign: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
}

/// `scoring.contract.MAX_PULSE_REASONS`.
const MAX_PULSE_REASONS: usize = 8;

/// The stream of each event type, as the index of `TopicKind` (purchases, usage, tickets, payments).
fn stream_of(kind: &str) -> Option<usize> {
    Some(match kind {
        "purchase.completed" | "purchase.refunded" | "checkout.abandoned" => 0,
        "usage.session" | "usage.feature" | "email.sent" | "email.opened" | "email.clicked" | "email.unsubscribed" => 1,
        "ticket.opened" | "ticket.resolved" | "ticket.reopened" | "survey.answered" | "survey.sent" | "csm.touchpoint" | "csm.pulse" => 2,
        "invoice.issued" | "payment.succeeded" | "payment.failed" | "subscription.updated" | "subscription.cancelled" => 3,
        _ => return None,
    })
}

/// A struct from a JSON object. serde would also read a struct from an array, field by
/// field, which the contract refuses.
fn parse<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Option<T> {
    let text = raw.get();
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// The payload of an event of type `kind`, when it surely passes the contract. `due_ms`,
/// when given, is an invoice's due time as the contract read it (else read here).
pub fn payload(kind: &str, raw: &RawValue, due_ms: Option<i64>) -> Option<Data> {
    Some(match kind {
        "purchase.completed" => {
            let data: PurchaseCompletedData = parse(raw)?;
            let items = data.items.iter().map(|item| parse::<ItemData>(item)).collect::<Option<Vec<_>>>()?;
            let items_ok = items.len() <= MAX_ITEMS
                && items.iter().all(|item| non_empty(&item.sku) && quantity(item.quantity) && money(item.unit_price) && short_or_none(&item.category));
            if !(non_empty(&data.order_id) && money(data.amount) && data.currency.chars().count() == 3 && items_ok) {
                return None;
            }
            let items = items.into_iter().map(|item| Item { category: item.category }).collect();
            Data::PurchaseCompleted { amount: data.amount, items }
        }
        "purchase.refunded" => {
            let data: OrderAmountData = parse(raw)?;
            if !(non_empty(&data.order_id) && money(data.amount)) {
                return None;
            }
            Data::PurchaseRefunded { amount: data.amount }
        }
        "checkout.abandoned" => {
            let data: CheckoutAbandonedData = parse(raw)?;
            if !data.cart_value.is_none_or(money) {
                return None;
            }
            Data::CheckoutAbandoned
        }
        "usage.session" => {
            let data: UsageSessionData = parse(raw)?;
            if !(non_empty(&data.user_id) && data.duration_seconds.is_finite() && (0.0..=MAX_DURATION_SECONDS).contains(&data.duration_seconds)) {
                return None;
            }
            Data::UsageSession { user_id: data.user_id }
        }
        "usage.feature" => {
            let data: UsageFeatureData = parse(raw)?;
            if !(non_empty(&data.user_id) && non_empty(&data.feature) && quantity(data.count)) {
                return None;
            }
            Data::UsageFeature { user_id: data.user_id, feature: data.feature, count: data.count }
        }
        "ticket.opened" => {
            let data: TicketOpenedData = parse(raw)?;
            if !(non_empty(&data.ticket_id) && ["low", "normal", "high", "urgent"].contains(&data.priority.as_str())) {
                return None;
            }
            Data::TicketOpened { ticket_id: data.ticket_id, priority: data.priority }
        }
        "ticket.resolved" | "ticket.reopened" => {
            let data: TicketData = parse(raw)?;
            if !non_empty(&data.ticket_id) {
                return None;
            }
            if kind == "ticket.resolved" {
                Data::TicketResolved { ticket_id: data.ticket_id }
            } else {
                Data::TicketReopened { ticket_id: data.ticket_id }
            }
        }
        "survey.answered" => {
            let data: SurveyAnsweredData = parse(raw)?;
            let default = default_scale(&data.survey)?; // also: the survey is one of the five
            let (low, high) = data.scale.unwrap_or(default);
            let in_range = survey_number(low) && survey_number(high) && low < high && low <= data.score && data.score <= high;
            let comment_fits = data.comment.as_deref().is_none_or(|text| text.len() <= MAX_COMMENT || text.chars().count() <= MAX_COMMENT);
            let texts_fit = short_or_none(&data.question) && short_or_none(&data.touchpoint);
            let question_known = data.survey != "csi" || data.question.as_deref().is_some_and(|question| CSI_QUESTIONS.contains(&question));
            if !(survey_number(data.score) && in_range && comment_fits && texts_fit && question_known) {
                return None;
            }
            Data::SurveyAnswered { survey: data.survey, score: data.score, scale: data.scale, comment: data.comment, question: data.question }
        }
        "email.sent" | "email.opened" | "email.clicked" | "email.unsubscribed" => {
            let data: EmailData = parse(raw)?;
            if !(short_or_none(&data.campaign) && short_or_none(&data.message_id)) {
                return None;
            }
            let action = ["email.sent", "email.opened", "email.clicked", "email.unsubscribed"].iter().position(|known| *known == kind)?;
            Data::Email { action }
        }
        "survey.sent" => {
            let data: SurveySentData = parse(raw)?;
            default_scale(&data.survey)?; // the survey is one of the five
            if !short_or_none(&data.touchpoint) {
                return None;
            }
            Data::SurveySent { survey: data.survey }
        }
        "csm.touchpoint" => {
            let data: CsmTouchpointData = parse(raw)?;
            let channel_known = ["call", "meeting", "email", "qbr"].contains(&data.channel.as_str());
            let sentiment_known = data.sentiment.as_deref().is_none_or(|sentiment| ["positive", "neutral", "negative"].contains(&sentiment));
            if !(channel_known && sentiment_known && short_or_none(&data.outcome) && short_or_none(&data.csm)) {
                return None;
            }
            Data::CsmTouchpoint { negative: data.sentiment.as_deref() == Some("negative") }
        }
        "csm.pulse" => {
            let data: CsmPulseData = parse(raw)?;
            let expires_ms = match (due_ms, &data.expires_at) {
                (Some(expires_ms), _) => Some(expires_ms),
                (None, Some(expires_at)) => Some(timestamp_ms(expires_at)?),
                (None, None) => None,
            };
            let reasons_fit = data.reasons.len() <= MAX_PULSE_REASONS && data.reasons.iter().all(|reason| short(reason));
            if !((1..=5).contains(&data.rating) && reasons_fit && short_or_none(&data.csm)) {
                return None;
            }
            Data::CsmPulse { rating: data.rating, reasons: data.reasons, expires_ms }
        }
        "invoice.issued" => {
            let data: InvoiceIssuedData = parse(raw)?;
            let due_ms = match due_ms {
                Some(due_ms) => due_ms,
                None => timestamp_ms(&data.due_at)?,
            };
            if !(non_empty(&data.invoice_id) && money(data.amount)) {
                return None;
            }
            Data::InvoiceIssued { invoice_id: data.invoice_id, amount: data.amount, due_ms }
        }
        "payment.succeeded" => {
            let data: PaymentSucceededData = parse(raw)?;
            if !(non_empty(&data.invoice_id) && money(data.amount)) {
                return None;
            }
            Data::PaymentSucceeded { invoice_id: data.invoice_id }
        }
        "payment.failed" => {
            let data: PaymentFailedData = parse(raw)?;
            if !(non_empty(&data.invoice_id) && money(data.amount) && short_or_none(&data.reason)) {
                return None;
            }
            Data::PaymentFailed
        }
        "subscription.updated" => {
            let data: SubscriptionUpdatedData = parse(raw)?;
            if !(money(data.mrr) && short_or_none(&data.plan)) {
                return None;
            }
            Data::SubscriptionUpdated { mrr: data.mrr, plan: data.plan }
        }
        "subscription.cancelled" => {
            let data: SubscriptionCancelledData = parse(raw)?;
            if !short_or_none(&data.reason) {
                return None;
            }
            Data::SubscriptionCancelled { reason: data.reason }
        }
        _ => return None,
    })
}

/// An event `scoring.contract` accepted, with the event time and due time it read: an error
/// (the Python model applies it then) only for a payload `accepted` would decline too.
pub fn read_accepted(value: &[u8], occurred_at_ms: i64, due_ms: Option<i64>) -> Result<Event, String> {
    let envelope: Envelope = serde_json::from_slice(value).map_err(|error| error.to_string())?;
    let data = match (envelope.data, envelope.kind) {
        (Some(raw), kind) => payload(kind, raw, due_ms),
        (None, "checkout.abandoned") => Some(Data::CheckoutAbandoned),
        (None, "subscription.cancelled") => Some(Data::SubscriptionCancelled { reason: None }),
        (None, _) => None,
    };
    let data = data.ok_or_else(|| format!("the kernel does not read this {} payload", envelope.kind))?;
    Ok(Event { event_id: envelope.event_id, occurred_at_ms, data })
}

/// The event, and its customer, when the contract surely accepts the message as it is on
/// `stream` (the index of its `TopicKind`) with key `key`; None leaves it to `scoring.contract`.
pub fn accepted(key: &[u8], value: &[u8], stream: usize, now_ms: i64, max_future_skew_ms: i64) -> Option<(Event, String)> {
    if value.trim_ascii_start().first() != Some(&b'{') {
        return None; // serde would read the envelope from an array too
    }
    let envelope: Envelope = serde_json::from_slice(value).ok()?;
    if stream_of(envelope.kind)? != stream || !non_empty(&envelope.event_id) || !non_empty(&envelope.customer_id) {
        return None;
    }
    if envelope.customer_id.as_bytes() != key {
        return None;
    }
    let occurred_at_ms = timestamp_ms(&envelope.occurred_at)?;
    if occurred_at_ms > now_ms.checked_add(max_future_skew_ms)? {
        return None;
    }
    let data = payload(envelope.kind, envelope.data?, None)?;
    Some((Event { event_id: envelope.event_id, occurred_at_ms, data }, envelope.customer_id))
}
