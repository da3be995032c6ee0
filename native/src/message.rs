//! The `customer-health` and `churn-alerts` messages as `scoring.output` builds them and
//! msgspec encodes them: fields in the same order, floats in the same shortest form
//! (Ryu's, which is msgspec's: `0.00001`, `1e-7`, `1e16`), strings escaped the same way.

use crate::alerts::Alert;
use crate::health::HealthScore;

pub struct Json {
    pub bytes: Vec<u8>,
}

impl Json {
    pub fn new() -> Self {
        Json { bytes: Vec::with_capacity(1024) }
    }

    pub(crate) fn raw(&mut self, text: &str) {
        self.bytes.extend_from_slice(text.as_bytes());
    }

    /// A field's name: always one of this code's constants, with nothing to escape.
    pub(crate) fn key(&mut self, name: &'static str) {
        debug_assert!(!name.bytes().any(|byte| byte < 0x20 || byte == b'"' || byte == b'\\'));
        self.bytes.push(b'"');
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.extend_from_slice(b"\":");
    }

    /// `"name":"text",` (every field but an object's last is followed by a comma).
    pub(crate) fn string_field(&mut self, name: &'static str, text: &str) {
        self.key(name);
        self.string(text);
        self.bytes.push(b',');
    }

    pub(crate) fn float_field(&mut self, name: &'static str, value: f64) {
        self.key(name);
        self.float(value);
        self.bytes.push(b',');
    }

    pub(crate) fn int_field(&mut self, name: &'static str, value: i64) {
        self.key(name);
        self.int(value);
        self.bytes.push(b',');
    }

    /// An integer's digits, written without an intermediate String.
    pub(crate) fn int(&mut self, value: i64) {
        let mut digits = [0u8; 20];
        let mut position = digits.len();
        let mut rest = value.unsigned_abs();
        loop {
            position -= 1;
            digits[position] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if value < 0 {
            self.bytes.push(b'-');
        }
        self.bytes.extend_from_slice(&digits[position..]);
    }

    pub(crate) fn optional_int_field(&mut self, name: &'static str, value: Option<i64>) {
        match value {
            Some(value) => self.int_field(name, value),
            None => {
                self.key(name);
                self.raw("null,");
            }
        }
    }

    pub(crate) fn optional_float_field(&mut self, name: &'static str, value: Option<f64>) {
        self.key(name);
        self.optional_float(value);
        self.bytes.push(b',');
    }

    pub(crate) fn bool_field(&mut self, name: &'static str, value: bool) {
        self.key(name);
        self.raw(if value { "true," } else { "false," });
    }

    pub fn string(&mut self, text: &str) {
        self.bytes.push(b'"');
        let bytes = text.as_bytes();
        if !bytes.iter().any(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\') {
            self.bytes.extend_from_slice(bytes); // nearly always: nothing to escape
            self.bytes.push(b'"');
            return;
        }
        for &byte in bytes {
            match byte {
                b'"' => self.raw("\\\""),
                b'\\' => self.raw("\\\\"),
                b'\n' => self.raw("\\n"),
                b'\r' => self.raw("\\r"),
                b'\t' => self.raw("\\t"),
                0x08 => self.raw("\\b"),
                0x0c => self.raw("\\f"),
                0x00..=0x1f => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    self.raw("\\u00");
                    self.bytes.push(HEX[usize::from(byte >> 4)]);
                    self.bytes.push(HEX[usize::from(byte & 0x0f)]);
                }
                _ => self.bytes.push(byte),
            }
        }
        self.bytes.push(b'"');
    }

    pub fn float(&mut self, value: f64) {
        if value.is_finite() {
            self.raw(ryu::Buffer::new().format_finite(value));
        } else {
            self.raw("null"); // msgspec writes NaN and infinities as null
        }
    }

    pub(crate) fn optional_float(&mut self, value: Option<f64>) {
        match value {
            Some(value) => self.float(value),
            None => self.raw("null"),
        }
    }

    fn optional_string(&mut self, value: Option<&str>) {
        match value {
            Some(text) => self.string(text),
            None => self.raw("null"),
        }
    }
}

/// `floor(x · 10^n + 0.5) / 10^n`, as `scoring.output` rounds message values.
fn half_up(value: f64, scale: f64) -> f64 {
    (value * scale + 0.5).floor() / scale
}

/// UTC with milliseconds and a Z (`scoring.output.rfc3339`).
pub fn rfc3339(epoch_ms: i64) -> String {
    let seconds = epoch_ms.div_euclid(1000);
    let millisecond = epoch_ms.rem_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millisecond:03}Z",
            second_of_day / 3600,
            second_of_day % 3600 / 60,
            second_of_day % 60
        );
    }
    // Two per score message: digits written directly rather than through format!.
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut value: i64| {
        for position in (at..at + width).rev() {
            text[position] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, second_of_day / 3600);
    put(14, 2, second_of_day % 3600 / 60);
    put(17, 2, second_of_day % 60);
    put(20, 3, millisecond);
    String::from_utf8(text.to_vec()).expect("ASCII digits")
}

pub fn health_message(
    customer_id: &str,
    health: &HealthScore,
    computed_at_ms: i64,
    model_version: &str,
    trigger_event_id: Option<&str>,
) -> Vec<u8> {
    let as_of = rfc3339(health.as_of_ms);
    let json = &mut Json::new();
    json.raw("{");
    json.string_field("customer_id", customer_id);
    json.float_field("score", health.score);
    json.string_field("band", health.band);
    json.float_field("churn_risk", health.churn_risk);
    json.key("components");
    json.raw("{");
    for (index, component) in health.components.iter().enumerate() {
        if index > 0 {
            json.raw(",");
        }
        json.key(component.name);
        json.raw("{");
        json.float_field("score", half_up(component.score, 100.0));
        json.float_field("weight", half_up(component.weight, 10_000.0));
        json.key("contribution");
        json.float(half_up(component.contribution, 100.0));
        json.raw("}");
    }
    json.raw("},");
    json.float_field("confidence", half_up(health.confidence, 10_000.0));
    json.key("previous_score");
    json.optional_float(health.previous_score);
    json.raw(",");
    json.key("changes");
    json.raw("{");
    for (index, (name, change)) in health.changes.iter().enumerate() {
        if index > 0 {
            json.raw(",");
        }
        json.string(name); // a component's name, read from the record: escaped
        json.raw(":");
        json.float(half_up(*change, 100.0));
    }
    json.raw("},");
    json.string_field("as_of", &as_of);
    let computed_at = if computed_at_ms == health.as_of_ms { as_of.clone() } else { rfc3339(computed_at_ms) };
    json.string_field("computed_at", &computed_at);
    json.string_field("model_version", model_version);
    json.key("trigger_event_id");
    json.optional_string(trigger_event_id);
    json.raw(",");
    json.key("cancelled");
    json.raw(if health.cancelled_ms != 0 { "true" } else { "false" });
    json.raw(",");
    json.key("cancelled_at");
    let cancelled_at = (health.cancelled_ms != 0).then(|| rfc3339(health.cancelled_ms));
    json.optional_string(cancelled_at.as_deref());
    json.raw(",");
    json.key("cancellation_reason");
    json.optional_string(health.cancellation_reason.as_deref());
    json.raw(",");
    json.float_field("mrr", health.mrr);
    json.key("usage_growth");
    json.optional_float(health.usage_growth.map(|growth| half_up(growth, 10_000.0)));
    json.raw(",");
    json.key("churn_risk_horizon_days");
    json.optional_float(health.churn_risk_horizon_days);
    json.raw(",");
    json.key("needs_fresh_pulse");
    json.raw(if health.needs_fresh_pulse { "true" } else { "false" });
    json.raw("}");
    std::mem::take(&mut json.bytes)
}

pub fn alert_message(alert: &Alert, raised_at_ms: i64, model_version: &str) -> Vec<u8> {
    let json = &mut Json::new();
    json.raw("{");
    json.string_field("alert_id", &alert.alert_id);
    json.string_field("customer_id", &alert.customer_id);
    json.string_field("rule", alert.rule);
    json.string_field("severity", alert.severity);
    json.float_field("score", alert.score);
    json.key("previous_score");
    json.optional_float(alert.previous_score);
    json.raw(",");
    json.string_field("band", alert.band);
    json.float_field("churn_risk", alert.churn_risk);
    json.key("reasons");
    json.raw("[");
    for (index, (component, change)) in alert.reasons.iter().enumerate() {
        if index > 0 {
            json.raw(",");
        }
        json.raw("{");
        json.string_field("component", component);
        json.key("change");
        json.float(*change);
        json.raw("}");
    }
    json.raw("],");
    json.string_field("detail", &alert.detail);
    json.string_field("occurred_at", &rfc3339(alert.occurred_at_ms));
    json.string_field("raised_at", &rfc3339(raised_at_ms));
    json.key("model_version");
    json.string(model_version);
    json.raw(",");
    json.key("plan");
    json.optional_string(alert.plan.as_deref());
    json.raw(",");
    json.key("recommended_action");
    json.optional_string(alert.recommended_action.as_deref());
    json.raw(",");
    json.key("action_owner");
    json.optional_string(alert.action_owner.as_deref());
    json.raw(",");
    json.key("action_due_at");
    let due_at = alert.action_due_hours.map(|hours| rfc3339(raised_at_ms + (hours * 3_600_000.0) as i64));
    json.optional_string(due_at.as_deref());
    json.raw("}");
    std::mem::take(&mut json.bytes)
}
