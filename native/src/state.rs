//! The customer record of `scoring.structs.CustomerState`, field for field, and its
//! msgpack form (positional arrays; a record shorter than the current layout takes the defaults
//! of the fields appended since, as msgspec does).

use crate::msgpack::{Reader, Result, Writer};

/// The layout this code writes (`scoring.state.LAYOUT`) and the fields it knows, `layout` last:
/// a record with more was written by a newer layout and is declined (the Python model keeps them).
pub const LAYOUT: i64 = 5;
pub const KNOWN_FIELDS: usize = 50;

/// The day counters, in the order of `scoring.structs.COUNTERS`.
pub const COUNTERS: usize = 8;
pub const SESSIONS: usize = 0;
pub const FEATURE_USES: usize = 1;
pub const PURCHASES: usize = 2;
pub const REVENUE_CENTS: usize = 3;
pub const ABANDONED_CHECKOUTS: usize = 4;
pub const TICKETS_OPENED: usize = 5;
pub const PAYMENTS_FAILED: usize = 6;
pub const REFUNDS_CENTS: usize = 7;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct DayCounts {
    pub days: Vec<i64>,
    pub columns: [Vec<i64>; COUNTERS],
}

#[derive(Clone, Debug, PartialEq)]
pub struct OpenTicket {
    pub ticket_id: String,
    pub opened_ms: i64,
    pub priority: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SurveyResponse {
    pub survey: String,
    pub score: f64,
    pub scale_min: f64,
    pub scale_max: f64,
    pub answered_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UnpaidInvoice {
    pub invoice_id: String,
    pub amount: f64,
    pub due_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PublishedScore {
    pub score: f64,
    pub band: String,
    pub as_of_ms: i64,
    /// Python dicts keep insertion order, and so does this.
    pub contributions: Vec<(String, f64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CustomerState {
    pub customer_id: String,
    pub first_event_ms: i64,
    pub last_event_ms: i64,
    pub counts: DayCounts,
    pub users_last_day: Vec<(i64, i64)>,
    pub features_last_day: Vec<(String, i64)>,
    pub last_usage_ms: i64,
    pub first_purchase_ms: i64,
    pub last_purchase_ms: i64,
    pub purchase_days: i64,
    pub categories: Vec<String>,
    pub open_tickets: Vec<OpenTicket>,
    pub tickets_resolved: i64,
    pub tickets_reopened: i64,
    pub resolution_seconds: Vec<f64>,
    pub surveys: Vec<SurveyResponse>,
    pub unpaid_invoices: Vec<UnpaidInvoice>,
    pub has_billing: bool,
    pub mrr: f64,
    pub previous_mrr: f64,
    pub cancelled_ms: i64,
    pub applied_ids: Vec<u8>,
    pub published: Option<PublishedScore>,
    pub events_applied: i64,
    pub plan: Option<String>,
    pub source_partition: i64,
    pub source_offsets: Vec<i64>,
    pub active_days: i64,
    pub gap_days_mean: f64,
    pub alert_band: Option<String>,
    pub alert_episodes: Vec<(String, i64)>,
    pub alert_last_raised: Vec<(String, i64)>,
    pub recent_scores: Vec<(i64, f64)>,
    pub alert_times: Vec<i64>,
    pub alert_digest: Vec<(i64, String, String)>,
    /// The record's layout version (1: written before it existed).
    pub layout: i64,
    /// Layout 3: why the customer cancelled, while cancelled.
    pub cancellation_reason: Option<String>,
    /// Layout 4: the latest CSM touchpoints (not negative, negative), the latest pulse, survey invitations.
    pub contact_ms: i64,
    pub negative_contact_ms: i64,
    pub pulse_rating: i64,
    pub pulse_at_ms: i64,
    pub pulse_expires_ms: i64,
    pub pulse_reasons: Vec<String>,
    pub survey_invites: Vec<(i64, String)>,
    /// Per day (day, e-mails sent, opened, clicked) over the 90 days up to the latest, and the latest unsubscription.
    pub email_days: Vec<(i64, i64, i64, i64)>,
    pub email_unsubscribed_ms: i64,
    /// The UTC day of each of the last resolutions, aligned with the end of `resolution_seconds`.
    pub resolution_days: Vec<i64>,
    /// The last changes of MRR by time: (when, MRR after it; a cancellation is 0.0).
    pub mrr_changes: Vec<(i64, f64)>,
    /// Layout 5: when each of `categories` was first bought (0: an older layout did not keep it).
    pub category_first_ms: Vec<i64>,
    /// The published score just before the latest touchpoint not marked negative (-1: none).
    pub contact_score: f64,
}

impl CustomerState {
    pub fn new(customer_id: &str) -> Self {
        CustomerState {
            customer_id: customer_id.to_owned(),
            first_event_ms: 0,
            last_event_ms: 0,
            counts: DayCounts::default(),
            users_last_day: Vec::new(),
            features_last_day: Vec::new(),
            last_usage_ms: 0,
            first_purchase_ms: 0,
            last_purchase_ms: 0,
            purchase_days: 0,
            categories: Vec::new(),
            open_tickets: Vec::new(),
            tickets_resolved: 0,
            tickets_reopened: 0,
            resolution_seconds: Vec::new(),
            surveys: Vec::new(),
            unpaid_invoices: Vec::new(),
            has_billing: false,
            mrr: 0.0,
            previous_mrr: 0.0,
            cancelled_ms: 0,
            applied_ids: Vec::new(),
            published: None,
            events_applied: 0,
            plan: None,
            source_partition: -1,
            source_offsets: vec![-1, -1, -1, -1],
            active_days: 0,
            gap_days_mean: 0.0,
            alert_band: None,
            alert_episodes: Vec::new(),
            alert_last_raised: Vec::new(),
            recent_scores: Vec::new(),
            alert_times: Vec::new(),
            alert_digest: Vec::new(),
            layout: LAYOUT,
            cancellation_reason: None,
            contact_ms: 0,
            negative_contact_ms: 0,
            pulse_rating: 0,
            pulse_at_ms: 0,
            pulse_expires_ms: 0,
            pulse_reasons: Vec::new(),
            survey_invites: Vec::new(),
            email_days: Vec::new(),
            email_unsubscribed_ms: 0,
            resolution_days: Vec::new(),
            mrr_changes: Vec::new(),
            category_first_ms: Vec::new(),
            contact_score: -1.0,
        }
    }
}

/// A struct encoded as an array: its field count, and whether the record is short of a field.
struct Fields {
    present: usize,
    next: usize,
}

impl Fields {
    fn open(reader: &mut Reader, declared: usize, required: usize, what: &'static str) -> Result<Self> {
        let present = reader.array()?;
        if present < required || present > declared {
            return Err(what);
        }
        Ok(Fields { present, next: 0 })
    }

    /// Whether the next field is in the record (else it keeps its default).
    fn has(&mut self) -> bool {
        self.next += 1;
        self.next <= self.present
    }
}

/// A list of (time, value) pairs: the recent scores, the MRR changes.
fn time_value_pairs(reader: &mut Reader, what: &'static str) -> Result<Vec<(i64, f64)>> {
    let length = reader.array()?;
    let mut pairs = Vec::with_capacity(length);
    for _ in 0..length {
        Fields::open(reader, 2, 2, what)?;
        pairs.push((reader.int()?, reader.float()?));
    }
    Ok(pairs)
}

fn int_list(reader: &mut Reader) -> Result<Vec<i64>> {
    let length = reader.array()?;
    let mut values = Vec::with_capacity(length);
    for _ in 0..length {
        values.push(reader.int()?);
    }
    Ok(values)
}

fn string_int_map(reader: &mut Reader) -> Result<Vec<(String, i64)>> {
    let length = reader.map()?;
    (0..length).map(|_| Ok((reader.string()?, reader.int()?))).collect()
}

fn optional_string(reader: &mut Reader) -> Result<Option<String>> {
    Ok(if reader.nil()? { None } else { Some(reader.string()?) })
}

fn read_counts(reader: &mut Reader) -> Result<DayCounts> {
    let mut fields = Fields::open(reader, 1 + COUNTERS, 0, "DayCounts of an unknown length")?;
    let mut counts = DayCounts::default();
    if fields.has() {
        counts.days = int_list(reader)?;
    }
    for column in counts.columns.iter_mut() {
        if fields.has() {
            *column = int_list(reader)?;
        }
    }
    // As `scoring.structs.DayCounts.__post_init__`: a column out of step with the days would
    // be indexed past its end (no record this code writes; a corrupt or foreign one).
    if counts.columns.iter().any(|column| column.len() != counts.days.len()) {
        return Err("a day counter's column is not as long as the days");
    }
    Ok(counts)
}

fn read_published(reader: &mut Reader) -> Result<Option<PublishedScore>> {
    if reader.nil()? {
        return Ok(None);
    }
    let mut fields = Fields::open(reader, 4, 3, "a PublishedScore of an unknown length")?;
    fields.has();
    let score = reader.float()?;
    fields.has();
    let band = reader.string()?;
    fields.has();
    let as_of_ms = reader.int()?;
    let mut contributions = Vec::new();
    if fields.has() {
        let length = reader.map()?;
        for _ in 0..length {
            contributions.push((reader.string()?, reader.float()?));
        }
    }
    Ok(Some(PublishedScore { score, band, as_of_ms, contributions }))
}

pub fn decode(bytes: &[u8]) -> Result<CustomerState> {
    let reader = &mut Reader::new(bytes);
    // A newer layout's record (more fields) is declined: the Python model keeps its fields.
    let mut fields = Fields::open(reader, KNOWN_FIELDS, 1, "a CustomerState of an unknown length")?;
    fields.has();
    let mut state = CustomerState::new(&reader.string()?);
    macro_rules! field {
        ($target:expr, $read:expr) => {
            if fields.has() {
                $target = $read;
            }
        };
    }
    field!(state.first_event_ms, reader.int()?);
    field!(state.last_event_ms, reader.int()?);
    field!(state.counts, read_counts(reader)?);
    field!(state.users_last_day, {
        let length = reader.map()?;
        (0..length).map(|_| Ok((reader.int()?, reader.int()?))).collect::<Result<_>>()?
    });
    field!(state.features_last_day, string_int_map(reader)?);
    field!(state.last_usage_ms, reader.int()?);
    field!(state.first_purchase_ms, reader.int()?);
    field!(state.last_purchase_ms, reader.int()?);
    field!(state.purchase_days, reader.int()?);
    field!(state.categories, {
        let length = reader.array()?;
        (0..length).map(|_| reader.string()).collect::<Result<_>>()?
    });
    field!(state.open_tickets, {
        let length = reader.array()?;
        let mut tickets = Vec::with_capacity(length);
        for _ in 0..length {
            Fields::open(reader, 3, 3, "an OpenTicket of an unknown length")?;
            tickets.push(OpenTicket { ticket_id: reader.string()?, opened_ms: reader.int()?, priority: reader.int()? });
        }
        tickets
    });
    field!(state.tickets_resolved, reader.int()?);
    field!(state.tickets_reopened, reader.int()?);
    field!(state.resolution_seconds, {
        let length = reader.array()?;
        (0..length).map(|_| reader.float()).collect::<Result<_>>()?
    });
    field!(state.surveys, {
        let length = reader.array()?;
        let mut surveys = Vec::with_capacity(length);
        for _ in 0..length {
            Fields::open(reader, 5, 5, "a SurveyResponse of an unknown length")?;
            surveys.push(SurveyResponse {
                survey: reader.string()?,
                score: reader.float()?,
                scale_min: reader.float()?,
                scale_max: reader.float()?,
                answered_ms: reader.int()?,
            });
        }
        surveys
    });
    field!(state.unpaid_invoices, {
        let length = reader.array()?;
        let mut invoices = Vec::with_capacity(length);
        for _ in 0..length {
            Fields::open(reader, 3, 3, "an UnpaidInvoice of an unknown length")?;
            invoices.push(UnpaidInvoice { invoice_id: reader.string()?, amount: reader.float()?, due_ms: reader.int()? });
        }
        invoices
    });
    field!(state.has_billing, reader.boolean()?);
    field!(state.mrr, reader.float()?);
    field!(state.previous_mrr, reader.float()?);
    field!(state.cancelled_ms, reader.int()?);
    field!(state.applied_ids, reader.binary()?);
    field!(state.published, read_published(reader)?);
    field!(state.events_applied, reader.int()?);
    field!(state.plan, optional_string(reader)?);
    field!(state.source_partition, reader.int()?);
    field!(state.source_offsets, int_list(reader)?);
    field!(state.active_days, reader.int()?);
    field!(state.gap_days_mean, reader.float()?);
    field!(state.alert_band, optional_string(reader)?);
    field!(state.alert_episodes, string_int_map(reader)?);
    field!(state.alert_last_raised, string_int_map(reader)?);
    field!(state.recent_scores, time_value_pairs(reader, "a recent score of an unknown length")?);
    field!(state.alert_times, int_list(reader)?);
    field!(state.alert_digest, {
        let length = reader.array()?;
        let mut entries = Vec::with_capacity(length);
        for _ in 0..length {
            Fields::open(reader, 3, 3, "a digest entry of an unknown length")?;
            entries.push((reader.int()?, reader.string()?, reader.string()?));
        }
        entries
    });
    state.layout = 1; // a record without the field predates it
    field!(state.layout, reader.int()?);
    field!(state.cancellation_reason, optional_string(reader)?);
    field!(state.contact_ms, reader.int()?);
    field!(state.negative_contact_ms, reader.int()?);
    field!(state.pulse_rating, reader.int()?);
    field!(state.pulse_at_ms, reader.int()?);
    field!(state.pulse_expires_ms, reader.int()?);
    field!(state.pulse_reasons, {
        let length = reader.array()?;
        (0..length).map(|_| reader.string()).collect::<Result<Vec<String>>>()?
    });
    field!(state.survey_invites, {
        let length = reader.array()?;
        let mut invites = Vec::with_capacity(length);
        for _ in 0..length {
            Fields::open(reader, 2, 2, "a survey invitation of an unknown length")?;
            invites.push((reader.int()?, reader.string()?));
        }
        invites
    });
    field!(state.email_days, {
        let length = reader.array()?;
        let mut days = Vec::with_capacity(length);
        for _ in 0..length {
            Fields::open(reader, 4, 4, "an e-mail day of an unknown length")?;
            days.push((reader.int()?, reader.int()?, reader.int()?, reader.int()?));
        }
        days
    });
    field!(state.email_unsubscribed_ms, reader.int()?);
    field!(state.resolution_days, int_list(reader)?);
    field!(state.mrr_changes, time_value_pairs(reader, "an MRR change of an unknown length")?);
    field!(state.category_first_ms, int_list(reader)?);
    field!(state.contact_score, reader.float()?);
    if !reader.at_end() {
        return Err("bytes after the record");
    }
    Ok(state)
}

fn write_time_value_pairs(writer: &mut Writer, pairs: &[(i64, f64)]) {
    writer.array(pairs.len());
    for (at, value) in pairs {
        writer.array(2);
        writer.int(*at);
        writer.float(*value);
    }
}

fn write_int_list(writer: &mut Writer, values: &[i64]) {
    writer.array(values.len());
    for value in values {
        writer.int(*value);
    }
}

fn write_string_int_map(writer: &mut Writer, entries: &[(String, i64)]) {
    writer.map(entries.len());
    for (key, value) in entries {
        writer.string(key);
        writer.int(*value);
    }
}

fn write_optional_string(writer: &mut Writer, value: &Option<String>) {
    match value {
        Some(text) => writer.string(text),
        None => writer.nil(),
    }
}

pub fn encode(state: &CustomerState) -> Vec<u8> {
    let mut writer = Writer::with_capacity(256 + 24 * state.counts.days.len());
    let w = &mut writer;
    w.array(KNOWN_FIELDS);
    w.string(&state.customer_id);
    w.int(state.first_event_ms);
    w.int(state.last_event_ms);
    w.array(1 + COUNTERS);
    write_int_list(w, &state.counts.days);
    for column in &state.counts.columns {
        write_int_list(w, column);
    }
    w.map(state.users_last_day.len());
    for (user, day) in &state.users_last_day {
        w.int(*user);
        w.int(*day);
    }
    write_string_int_map(w, &state.features_last_day);
    w.int(state.last_usage_ms);
    w.int(state.first_purchase_ms);
    w.int(state.last_purchase_ms);
    w.int(state.purchase_days);
    w.array(state.categories.len());
    for category in &state.categories {
        w.string(category);
    }
    w.array(state.open_tickets.len());
    for ticket in &state.open_tickets {
        w.array(3);
        w.string(&ticket.ticket_id);
        w.int(ticket.opened_ms);
        w.int(ticket.priority);
    }
    w.int(state.tickets_resolved);
    w.int(state.tickets_reopened);
    w.array(state.resolution_seconds.len());
    for seconds in &state.resolution_seconds {
        w.float(*seconds);
    }
    w.array(state.surveys.len());
    for survey in &state.surveys {
        w.array(5);
        w.string(&survey.survey);
        w.float(survey.score);
        w.float(survey.scale_min);
        w.float(survey.scale_max);
        w.int(survey.answered_ms);
    }
    w.array(state.unpaid_invoices.len());
    for invoice in &state.unpaid_invoices {
        w.array(3);
        w.string(&invoice.invoice_id);
        w.float(invoice.amount);
        w.int(invoice.due_ms);
    }
    w.boolean(state.has_billing);
    w.float(state.mrr);
    w.float(state.previous_mrr);
    w.int(state.cancelled_ms);
    w.binary(&state.applied_ids);
    match &state.published {
        None => w.nil(),
        Some(published) => {
            w.array(4);
            w.float(published.score);
            w.string(&published.band);
            w.int(published.as_of_ms);
            w.map(published.contributions.len());
            for (name, contribution) in &published.contributions {
                w.string(name);
                w.float(*contribution);
            }
        }
    }
    w.int(state.events_applied);
    write_optional_string(w, &state.plan);
    w.int(state.source_partition);
    write_int_list(w, &state.source_offsets);
    w.int(state.active_days);
    w.float(state.gap_days_mean);
    write_optional_string(w, &state.alert_band);
    write_string_int_map(w, &state.alert_episodes);
    write_string_int_map(w, &state.alert_last_raised);
    write_time_value_pairs(w, &state.recent_scores);
    write_int_list(w, &state.alert_times);
    w.array(state.alert_digest.len());
    for (at_ms, rule, detail) in &state.alert_digest {
        w.array(3);
        w.int(*at_ms);
        w.string(rule);
        w.string(detail);
    }
    w.int(state.layout.max(LAYOUT)); // an older layout's record is written in this one
    write_optional_string(w, &state.cancellation_reason);
    w.int(state.contact_ms);
    w.int(state.negative_contact_ms);
    w.int(state.pulse_rating);
    w.int(state.pulse_at_ms);
    w.int(state.pulse_expires_ms);
    w.array(state.pulse_reasons.len());
    for reason in &state.pulse_reasons {
        w.string(reason);
    }
    w.array(state.survey_invites.len());
    for (sent_ms, survey) in &state.survey_invites {
        w.array(2);
        w.int(*sent_ms);
        w.string(survey);
    }
    w.array(state.email_days.len());
    for (day, sent, opened, clicked) in &state.email_days {
        w.array(4);
        w.int(*day);
        w.int(*sent);
        w.int(*opened);
        w.int(*clicked);
    }
    w.int(state.email_unsubscribed_ms);
    write_int_list(w, &state.resolution_days);
    write_time_value_pairs(w, &state.mrr_changes);
    write_int_list(w, &state.category_first_ms);
    w.float(state.contact_score);
    writer.bytes
}
