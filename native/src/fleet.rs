//! The fleet export's recount of one customer (`stream.worker.fleet.FleetExport`), held equal
//! to `scoring.fleet_sums` and `scoring.kpis` by tests/unit/test_kernel_fleet.py:
//!
//! - `contribution`: `scoring.fleet_sums.contribution` (what `FleetTotals.add` counts for one
//!   customer, as integers: floats in millionths, rounded half to even as Python's `round`);
//! - `unchanged_until`: `scoring.fleet_sums.unchanged_until` (the next moment time alone could
//!   change the contribution or the customer's KPIs);
//! - `kpis_json`: `stream.worker.fleet.customer_kpis_json` (`scoring.kpis.customer_kpis` with
//!   `as_of`, as msgspec encodes it);
//! - `encode_counted` / `decode_counted`: `scoring.fleet_sums.encode_counted` /
//!   `decode_counted` (what the export keeps on disk of what it counted for a customer).
//!
//! Floats are computed in the same order as the Python expressions, so they round the same.

use crate::message::{rfc3339, Json};
use crate::msgpack::{self, Reader, Writer};
use crate::state::{CustomerState, DayCounts, SurveyResponse, ABANDONED_CHECKOUTS, FEATURE_USES, PAYMENTS_FAILED, PURCHASES, REVENUE_CENTS, SESSIONS, TICKETS_OPENED};

const DAY_MS: i64 = 86_400_000;
const FIXED_POINT: f64 = 1_000_000.0;
const MAX_MRR_CHANGES: usize = 24;
const MAX_LIFETIME_PERIODS: f64 = 120.0;
const CSI_QUESTIONS: [&str; 3] = ["satisfied", "buy_again", "recommend"];
const URGENT: i64 = 3;

/// The sums of `FleetTotals`, in its field order (`scoring.fleet_sums` keys).
pub const SUMS: usize = 49;
pub const KEYS: [&str; SUMS] = [
    "customers", "active", "active_at_period_start", "new_in_period", "lost_in_period", "buyers", "repeat_buyers",
    "bands.healthy", "bands.at_risk", "bands.critical", "nps.promoter", "nps.passive", "nps.detractor",
    "csat_satisfied", "csat_answers", "ces_sum", "ces_answers", "cli_points_sum", "cli_answers", "csi_answered", "csi_secure",
    "resolution_seconds_sum", "resolutions", "mrr", "orders", "revenue", "abandoned_checkouts", "regular_customers",
    "survey_participants", "mrr_movement.start", "mrr_movement.existing_end", "mrr_movement.new", "mrr_movement.expansion",
    "mrr_movement.contraction", "mrr_movement.churned", "emails.sent", "emails.opened", "emails.clicked", "customers_emailed",
    "customers_unsubscribed", "invitations_answered", "invitations_missed", "existing_buyers", "upsold", "csm_touched",
    "score_change_since_touchpoint_sum", "active_users.1d", "active_users.7d", "active_users.30d",
];

// Indexes into a contribution.
const CUSTOMERS: usize = 0;
const ACTIVE: usize = 1;
const ACTIVE_AT_START: usize = 2;
const NEW_IN_PERIOD: usize = 3;
const LOST_IN_PERIOD: usize = 4;
const BUYERS: usize = 5;
const REPEAT_BUYERS: usize = 6;
const BANDS: usize = 7; // healthy, at_risk, critical
const NPS: usize = 10; // promoter, passive, detractor
const CSAT_SATISFIED: usize = 13;
const CSAT_ANSWERS: usize = 14;
const CES_SUM: usize = 15;
const CES_ANSWERS: usize = 16;
const CLI_POINTS_SUM: usize = 17;
const CLI_ANSWERS: usize = 18;
const CSI_ANSWERED: usize = 19;
const CSI_SECURE: usize = 20;
const RESOLUTION_SECONDS_SUM: usize = 21;
const RESOLUTIONS: usize = 22;
const MRR: usize = 23;
const ORDERS: usize = 24;
const REVENUE: usize = 25;
const ABANDONED: usize = 26;
const REGULAR: usize = 27;
const PARTICIPANTS: usize = 28;
const MRR_START: usize = 29;
const MRR_EXISTING_END: usize = 30;
const MRR_NEW: usize = 31;
const MRR_EXPANSION: usize = 32;
const MRR_CONTRACTION: usize = 33;
const MRR_CHURNED: usize = 34;
const EMAILS: usize = 35; // sent, opened, clicked
const EMAILED: usize = 38;
const UNSUBSCRIBED: usize = 39;
const INVITATIONS_ANSWERED: usize = 40;
const INVITATIONS_MISSED: usize = 41;
const EXISTING_BUYERS: usize = 42;
const UPSOLD: usize = 43;
const CSM_TOUCHED: usize = 44;
const SCORE_CHANGE_SUM: usize = 45;
const ACTIVE_USERS: usize = 46; // 1d, 7d, 30d

/// One customer's contribution: the known sums, and a band outside the three (counted under its name).
#[derive(Debug, Default, PartialEq)]
pub struct Contribution {
    pub sums: Vec<i64>,
    /// Which sums Python's contribution lists (a value that was not zero before rounding).
    pub listed: Vec<bool>,
    pub other_band: Option<String>,
}

/// A contribution as the export keeps it on disk (`scoring.fleet_sums.encode_counted`, byte for
/// byte): MessagePack, an array of the 49 sums in `KEYS` order and the other band's name or nil.
/// About 60 bytes where the record it was counted from is about a kilobyte.
pub fn encode_counted(part: &Contribution) -> Vec<u8> {
    let mut writer = Writer::with_capacity(SUMS * 3 + 24);
    writer.array(SUMS + 1);
    for value in &part.sums {
        writer.int(*value);
    }
    match &part.other_band {
        Some(band) => writer.string(band),
        None => writer.nil(),
    }
    writer.bytes
}

/// `encode_counted`'s bytes read back; an error (and nothing read) for anything else.
pub fn decode_counted(stored: &[u8]) -> msgpack::Result<Contribution> {
    let mut reader = Reader::new(stored);
    if reader.array()? != SUMS + 1 {
        return Err("a counted contribution has 50 items");
    }
    let sums = (0..SUMS).map(|_| reader.int()).collect::<msgpack::Result<Vec<i64>>>()?;
    let other_band = if reader.nil()? { None } else { Some(reader.string()?) };
    if !reader.at_end() {
        return Err("a counted contribution ends late");
    }
    Ok(Contribution { sums, listed: Vec::new(), other_band })
}

/// Floats the way `FleetTotals` accumulates them, then `_fixed`.
struct Accumulator {
    ints: [i64; SUMS],
    floats: [f64; SUMS],
    is_float: [bool; SUMS],
}

impl Accumulator {
    fn new() -> Self {
        let mut is_float = [false; SUMS];
        for index in [CES_SUM, CLI_POINTS_SUM, RESOLUTION_SECONDS_SUM, MRR, REVENUE, SCORE_CHANGE_SUM] {
            is_float[index] = true;
        }
        for index in MRR_START..=MRR_CHURNED {
            is_float[index] = true;
        }
        Accumulator { ints: [0; SUMS], floats: [0.0; SUMS], is_float }
    }

    fn count(&mut self, index: usize, value: i64) {
        self.ints[index] += value;
    }

    fn add(&mut self, index: usize, value: f64) {
        self.floats[index] += value;
    }

    fn into_contribution(self, other_band: Option<String>) -> Contribution {
        let mut sums = vec![0; SUMS];
        let mut listed = vec![false; SUMS];
        for index in 0..SUMS {
            if self.is_float[index] {
                let value = self.floats[index];
                listed[index] = value != 0.0;
                sums[index] = (value * FIXED_POINT).round_ties_even() as i64;
            } else {
                listed[index] = self.ints[index] != 0;
                sums[index] = self.ints[index];
            }
        }
        Contribution { sums, listed, other_band }
    }
}

fn day_total(counts: &DayCounts, column: usize, first_day: i64, last_day: i64) -> i64 {
    let start = counts.days.partition_point(|day| *day < first_day);
    let end = counts.days.partition_point(|day| *day <= last_day);
    // A column shorter than the days (no record this code writes) counts nothing rather than panicking.
    counts.columns[column].get(start..end).map_or(0, |values| values.iter().sum())
}

fn window_total(state: &CustomerState, column: usize, at_ms: i64, days: i64) -> i64 {
    let last_day = at_ms.div_euclid(DAY_MS);
    day_total(&state.counts, column, last_day - days + 1, last_day)
}

fn active_users(state: &CustomerState, at_ms: i64, days: i64) -> i64 {
    let today = at_ms.div_euclid(DAY_MS);
    state.users_last_day.iter().filter(|(_, last_day)| today - days < *last_day && *last_day <= today).count() as i64
}

fn new_categories(state: &CustomerState, since_ms: i64, at_ms: i64) -> i64 {
    state.category_first_ms.iter().filter(|first| **first != 0 && since_ms <= **first && **first <= at_ms).count() as i64
}

/// `scoring.kpis.resolutions_between`: the resolution times of the days first..last, oldest first
/// (the last ``len(resolution_days)`` times carry a day; older ones do not and are left out).
fn resolutions_between(state: &CustomerState, first_day: i64, last_day: i64) -> Vec<f64> {
    let seconds = &state.resolution_seconds;
    let days = &state.resolution_days;
    let paired = seconds.len().min(days.len());
    let mut chosen = Vec::new();
    for offset in (1..=paired).rev() {
        let (value, day) = (seconds[seconds.len() - offset], days[days.len() - offset]);
        if first_day <= day && day <= last_day {
            chosen.push(value);
        }
    }
    chosen
}

fn email_totals(state: &CustomerState, since_ms: i64, at_ms: i64) -> (i64, i64, i64) {
    let (first, last) = (since_ms.div_euclid(DAY_MS), at_ms.div_euclid(DAY_MS));
    let (mut sent, mut opened, mut clicked) = (0, 0, 0);
    for (day, day_sent, day_opened, day_clicked) in &state.email_days {
        if first <= *day && *day <= last {
            sent += day_sent;
            opened += day_opened;
            clicked += day_clicked;
        }
    }
    (sent, opened, clicked)
}

fn answer_share(response: &SurveyResponse) -> f64 {
    (response.score - response.scale_min) / (response.scale_max - response.scale_min)
}

fn loyalty_points(response: &SurveyResponse) -> f64 {
    100.0 * (response.scale_max - response.score) / (response.scale_max - response.scale_min)
}

/// `scoring.kpis.NPS_SCALES` (after `int()` of the scale's ends): (highest detractor, highest passive).
fn nps_bands(response: &SurveyResponse) -> Option<(f64, f64)> {
    match (response.scale_min.trunc() as i64, response.scale_max.trunc() as i64) {
        (0, 10) | (1, 10) => Some((6.0, 8.0)),
        (1, 7) => Some((5.0, 6.0)),
        (1, 5) => Some((3.0, 4.0)),
        _ => None,
    }
}

/// 0 promoter, 1 passive, 2 detractor (`scoring.kpis.nps_category`).
fn nps_category(response: &SurveyResponse) -> Option<usize> {
    let (detractor_max, passive_max) = nps_bands(response)?;
    Some(if response.score <= detractor_max {
        2
    } else if response.score <= passive_max {
        1
    } else {
        0
    })
}

/// `scoring.kpis.recent_answers`: the answers of [since, at] by survey (nps, csat, ces, cli) in
/// the order they were given, and whether the customer is CSI-secure (None: not all three answered).
struct RecentAnswers<'a> {
    by_survey: [Vec<&'a SurveyResponse>; 4],
    secure: Option<bool>,
}

fn recent_answers(surveys: &[SurveyResponse], since_ms: i64, at_ms: i64) -> RecentAnswers<'_> {
    let mut ordered: Vec<&SurveyResponse> = surveys.iter().filter(|r| since_ms <= r.answered_ms && r.answered_ms <= at_ms).collect();
    ordered.sort_by_key(|response| response.answered_ms); // stable, as Python's sorted
    let mut by_survey: [Vec<&SurveyResponse>; 4] = Default::default();
    let mut secure: [Option<f64>; 3] = [None; 3];
    for response in ordered {
        if let Some(question) = response.survey.strip_prefix("csi.") {
            if let Some(index) = CSI_QUESTIONS.iter().position(|known| *known == question) {
                secure[index] = Some(answer_share(response));
            }
        } else if let Some(index) = ["nps", "csat", "ces", "cli"].iter().position(|known| *known == response.survey) {
            by_survey[index].push(response);
        }
    }
    let secure = if secure.iter().all(Option::is_some) { Some(secure.iter().all(|share| share.unwrap_or(0.0) > 0.5)) } else { None };
    RecentAnswers { by_survey, secure }
}

fn survey_kind(survey: &str) -> &str {
    survey.split('.').next().unwrap_or(survey)
}

/// `scoring.kpis.invitation_outcomes`: (answered, missed) of the surveys sent in [since, at].
fn invitation_outcomes(state: &CustomerState, since_ms: i64, at_ms: i64, response_days: f64) -> (i64, i64) {
    let window = (response_days * DAY_MS as f64) as i64;
    let (mut answered, mut missed) = (0, 0);
    for (sent_ms, kind) in &state.survey_invites {
        if !(since_ms <= *sent_ms && *sent_ms <= at_ms) {
            continue;
        }
        let deadline = sent_ms + window;
        let until = deadline.min(at_ms);
        if state.surveys.iter().any(|a| *sent_ms <= a.answered_ms && a.answered_ms <= until && survey_kind(&a.survey) == kind) {
            answered += 1;
        } else if deadline <= at_ms {
            missed += 1;
        }
    }
    (answered, missed)
}

/// `scoring.kpis.score_change_since_contact`.
fn score_change_since_contact(state: &CustomerState) -> Option<f64> {
    if state.contact_score < 0.0 {
        return None;
    }
    state.published.as_ref().map(|published| crate::health::py_round(published.score - state.contact_score, 2))
}

/// `scoring.kpis.mrr_at`.
fn mrr_at(state: &CustomerState, at_ms: i64) -> Option<f64> {
    let changes = &state.mrr_changes;
    if changes.is_empty() {
        return Some(if state.cancelled_ms != 0 { 0.0 } else { state.mrr });
    }
    let mut value = None;
    for (when, mrr) in changes {
        if *when >= at_ms {
            break;
        }
        value = Some(*mrr);
    }
    match value {
        None if changes.len() >= MAX_MRR_CHANGES => None,
        None => Some(0.0),
        found => found,
    }
}

const ACTIVITY_COLUMNS: [usize; 5] = [SESSIONS, FEATURE_USES, PURCHASES, TICKETS_OPENED, PAYMENTS_FAILED];

/// `scoring.fleet_sums.contribution`: `FleetTotals(at_ms, period_days, response_days).add(state)`.
pub fn contribution(state: &CustomerState, at_ms: i64, period_days: i64, response_days: f64) -> Contribution {
    let mut sums = Accumulator::new();
    let period_ms = period_days * DAY_MS;
    let start = at_ms - period_ms;
    let today = at_ms.div_euclid(DAY_MS);
    let start_day = start.div_euclid(DAY_MS);
    let counts = &state.counts;
    sums.count(CUSTOMERS, 1);
    let active_now = state.last_event_ms >= start;
    let cancelled_by_now = state.cancelled_ms != 0 && state.cancelled_ms <= at_ms;
    let cancelled_in_period = state.cancelled_ms != 0 && start <= state.cancelled_ms && state.cancelled_ms <= at_ms;
    let was_active_before = state.first_event_ms < start
        && (ACTIVITY_COLUMNS.iter().any(|column| day_total(counts, *column, start_day - period_days, start_day - 1) != 0)
            || (start - period_ms <= state.last_event_ms && state.last_event_ms < start));
    sums.count(ACTIVE, (active_now && !cancelled_by_now) as i64);
    sums.count(NEW_IN_PERIOD, (state.first_event_ms >= start) as i64);
    if was_active_before {
        sums.count(ACTIVE_AT_START, 1);
        sums.count(LOST_IN_PERIOD, (!active_now || cancelled_in_period) as i64);
    }
    let orders = day_total(counts, PURCHASES, start_day + 1, today);
    sums.count(BUYERS, (orders >= 1) as i64);
    sums.count(REPEAT_BUYERS, (orders >= 2) as i64);
    sums.count(ORDERS, orders);
    sums.add(REVENUE, day_total(counts, REVENUE_CENTS, start_day + 1, today) as f64 / 100.0);
    sums.count(ABANDONED, day_total(counts, ABANDONED_CHECKOUTS, start_day + 1, today));
    let bought_before = state.first_purchase_ms != 0 && state.first_purchase_ms < start;
    let purchase_days = counts.days.iter().zip(&counts.columns[PURCHASES]).filter(|(day, count)| start_day < **day && **day <= today && **count != 0).count();
    sums.count(REGULAR, (orders >= 1 && (bought_before || purchase_days >= 2)) as i64);
    let existing = orders >= 1 && bought_before;
    sums.count(EXISTING_BUYERS, existing as i64);
    sums.count(UPSOLD, (existing && new_categories(state, start, at_ms) > 0) as i64);
    if let Some(change) = score_change_since_contact(state) {
        if start <= state.contact_ms && state.contact_ms <= at_ms {
            sums.count(CSM_TOUCHED, 1);
            sums.add(SCORE_CHANGE_SUM, change);
        }
    }
    sums.count(PARTICIPANTS, state.surveys.iter().any(|r| start <= r.answered_ms && r.answered_ms <= at_ms) as i64);
    let (answered, missed) = invitation_outcomes(state, start, at_ms, response_days);
    let (sent, opened, clicked) = email_totals(state, start, at_ms);
    sums.count(EMAILS, sent);
    sums.count(EMAILS + 1, opened);
    sums.count(EMAILS + 2, clicked);
    sums.count(EMAILED, (sent > 0) as i64);
    sums.count(UNSUBSCRIBED, (start <= state.email_unsubscribed_ms && state.email_unsubscribed_ms <= at_ms) as i64);
    sums.count(INVITATIONS_ANSWERED, answered);
    sums.count(INVITATIONS_MISSED, missed);
    for (offset, days) in [1, 7, 30].into_iter().enumerate() {
        sums.count(ACTIVE_USERS + offset, active_users(state, at_ms, days));
    }
    let mut other_band = None;
    if let Some(published) = &state.published {
        match ["healthy", "at_risk", "critical"].iter().position(|band| *band == published.band) {
            Some(index) => sums.count(BANDS + index, 1),
            None => other_band = Some(published.band.clone()),
        }
    }
    add_answers(&mut sums, state, start, at_ms);
    let resolved = resolutions_between(state, start_day + 1, today);
    sums.add(RESOLUTION_SECONDS_SUM, resolved.iter().fold(0.0, |total, seconds| total + seconds));
    sums.count(RESOLUTIONS, resolved.len() as i64);
    let end_mrr = if state.mrr > 0.0 && !cancelled_by_now { state.mrr } else { 0.0 };
    sums.add(MRR, end_mrr);
    add_mrr_movement(&mut sums, state, start, end_mrr);
    sums.into_contribution(other_band)
}

fn add_mrr_movement(sums: &mut Accumulator, state: &CustomerState, start: i64, end_mrr: f64) {
    let Some(start_mrr) = mrr_at(state, start) else { return };
    if start_mrr <= 0.0 {
        sums.add(MRR_NEW, end_mrr);
        return;
    }
    sums.add(MRR_START, start_mrr);
    sums.add(MRR_EXISTING_END, end_mrr);
    if end_mrr == 0.0 {
        sums.add(MRR_CHURNED, start_mrr);
    } else if end_mrr > start_mrr {
        sums.add(MRR_EXPANSION, end_mrr - start_mrr);
    } else {
        sums.add(MRR_CONTRACTION, start_mrr - end_mrr);
    }
}

fn add_answers(sums: &mut Accumulator, state: &CustomerState, start: i64, at_ms: i64) {
    let answers = recent_answers(&state.surveys, start, at_ms);
    for response in &answers.by_survey[0] {
        if let Some(category) = nps_category(response) {
            sums.count(NPS + category, 1);
        }
    }
    for response in &answers.by_survey[1] {
        sums.count(CSAT_ANSWERS, 1);
        sums.count(CSAT_SATISFIED, (1.0 + 4.0 * answer_share(response) >= 4.0) as i64);
    }
    for response in &answers.by_survey[2] {
        sums.count(CES_ANSWERS, 1);
        sums.add(CES_SUM, 1.0 + 6.0 * answer_share(response));
    }
    for response in &answers.by_survey[3] {
        sums.count(CLI_ANSWERS, 1);
        sums.add(CLI_POINTS_SUM, loyalty_points(response));
    }
    if let Some(secure) = answers.secure {
        sums.count(CSI_ANSWERED, 1);
        sums.count(CSI_SECURE, secure as i64);
    }
}

/// The windows of each kind of timestamp and of day (`scoring.fleet_sums._shifts`).
pub struct Shifts {
    timestamps: [Vec<i64>; 12],
    days: [Vec<i64>; 5],
}

impl Shifts {
    pub fn new(period_days: i64, response_days: f64) -> Self {
        let (p, r, d30, d90) = (period_days * DAY_MS, (response_days * DAY_MS as f64) as i64, 30 * DAY_MS, 90 * DAY_MS);
        let windows = |lengths: &[i64]| {
            let mut shifts: Vec<i64> = lengths.iter().flat_map(|length| [*length, length + 1]).collect();
            shifts.sort_unstable();
            shifts.dedup();
            shifts
        };
        let sorted = |mut values: Vec<i64>| {
            values.sort_unstable();
            values.dedup();
            values
        };
        Shifts {
            timestamps: [
                windows(&[p]),
                windows(&[p, 2 * p]),
                windows(&[0, p]),
                windows(&[p, d30]),
                windows(&[0, p]),
                windows(&[0, p]),
                windows(&[0]),
                windows(&[0, p, d90]),
                windows(&[0, r, p, d90]),
                windows(&[p]),
                windows(&[0]),
                windows(&[0, p, d30]),
            ],
            days: [
                sorted(vec![0, 7, 30, 90, period_days, period_days + 1, 2 * period_days + 1]),
                vec![0, 1, 7, 30],
                vec![0, 30],
                sorted(vec![0, 30, period_days]),
                sorted(vec![0, 91, period_days + 1]),
            ],
        }
    }
}

/// `scoring.fleet_sums.unchanged_until`.
pub fn unchanged_until(state: &CustomerState, at_ms: i64, shifts: &Shifts) -> Option<i64> {
    let mut first: Option<i64> = None;
    let mut earliest = |candidate: i64| {
        if first.is_none_or(|known| candidate < known) {
            first = Some(candidate);
        }
    };
    let singles = [state.first_event_ms, state.last_event_ms, state.cancelled_ms, state.first_purchase_ms, state.email_unsubscribed_ms, state.contact_ms, state.pulse_expires_ms];
    let timestamps = singles.into_iter().enumerate().filter(|(_, time)| *time != 0)
        .chain(state.surveys.iter().map(|response| (7, response.answered_ms)))
        .chain(state.survey_invites.iter().map(|(sent_ms, _)| (8, *sent_ms)))
        .chain(state.mrr_changes.iter().map(|(when, _)| (9, *when)))
        .chain(state.unpaid_invoices.iter().map(|invoice| (10, invoice.due_ms)))
        .chain(state.category_first_ms.iter().filter(|time| **time != 0).map(|time| (11, *time)));
    for (kind, time) in timestamps {
        if let Some(shift) = shifts.timestamps[kind].iter().find(|shift| time + **shift > at_ms) {
            earliest(time + shift);
        }
    }
    let today = at_ms.div_euclid(DAY_MS);
    let days = state.counts.days.iter().map(|day| (0, *day))
        .chain(state.users_last_day.iter().map(|(_, day)| (1, *day)))
        .chain(state.features_last_day.iter().map(|(_, day)| (2, *day)))
        .chain(state.resolution_days.iter().map(|day| (3, *day)))
        .chain(state.email_days.iter().map(|(day, ..)| (4, *day)));
    for (kind, day) in days {
        if let Some(shift) = shifts.days[kind].iter().find(|shift| day + **shift > today) {
            earliest((day + shift) * DAY_MS);
        }
    }
    first
}

fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() { None } else { Some(values.iter().fold(0.0, |total, value| total + value) / values.len() as f64) }
}

fn percentile(values: &[f64], fraction: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut ordered = values.to_vec();
    ordered.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let position = (ordered.len() - 1) as f64 * fraction;
    let low = position.floor();
    let high = (low as usize + 1).min(ordered.len() - 1);
    let low_value = ordered[low as usize];
    Some(low_value + (ordered[high] - low_value) * (position - low))
}

fn share(part: i64, whole: i64) -> Option<f64> {
    if whole == 0 { None } else { Some((part as f64 / whole as f64 * 100.0).min(100.0)) }
}

/// `stream.worker.fleet.customer_kpis_json`: the customer's KPIs at `at_ms` with `as_of`, as
/// msgspec encodes `scoring.kpis.CustomerKpis`; `churn_risk` gives the LTV its expected lifetime.
pub fn kpis_json(state: &CustomerState, at_ms: i64, key_features: &[String], response_days: f64, churn_risk: Option<f64>) -> Vec<u8> {
    let today = at_ms.div_euclid(DAY_MS);
    let mut json = Json::new();
    json.raw("{");
    json.string_field("as_of", &rfc3339(at_ms));
    let (dau, wau, mau) = (active_users(state, at_ms, 1), active_users(state, at_ms, 7), active_users(state, at_ms, 30));
    json.int_field("daily_active_users", dau);
    json.int_field("weekly_active_users", wau);
    json.int_field("monthly_active_users", mau);
    json.optional_float_field("stickiness", if mau != 0 { Some(dau as f64 / mau as f64) } else { None });
    let adoption = if key_features.is_empty() {
        None
    } else {
        let used = key_features.iter().filter(|feature| {
            let last = state.features_last_day.iter().find(|(name, _)| name == *feature).map_or(-1_000_000_000, |(_, day)| *day);
            today - 30 < last && last <= today
        });
        Some(used.count() as f64 / key_features.len() as f64)
    };
    json.optional_float_field("key_feature_adoption", adoption);
    json.int_field("sessions_7d", window_total(state, SESSIONS, at_ms, 7));
    json.int_field("sessions_30d", window_total(state, SESSIONS, at_ms, 30));
    let orders = window_total(state, PURCHASES, at_ms, 30);
    let revenue = window_total(state, REVENUE_CENTS, at_ms, 30) as f64 / 100.0;
    json.int_field("orders_30d", orders);
    json.float_field("revenue_30d", revenue);
    json.optional_float_field("average_basket_30d", if orders == 0 { None } else { Some(revenue / orders as f64) });
    let abandoned = window_total(state, ABANDONED_CHECKOUTS, at_ms, 30);
    let checkouts = abandoned + orders;
    json.optional_float_field("checkout_abandonment_30d", if checkouts == 0 { None } else { Some(abandoned as f64 / checkouts as f64 * 100.0) });
    json.optional_float_field("days_since_last_purchase", days_since(state.last_purchase_ms, at_ms));
    json.int_field("open_tickets", state.open_tickets.len() as i64);
    json.int_field("urgent_open_tickets", state.open_tickets.iter().filter(|ticket| ticket.priority == URGENT).count() as i64);
    let hours: Vec<f64> = resolutions_between(state, today - 29, today).into_iter().map(|seconds| seconds / 3600.0).collect();
    json.optional_float_field("mean_resolution_hours", mean(&hours));
    json.optional_float_field("p90_resolution_hours", percentile(&hours, 0.9));
    let handled = state.tickets_resolved + state.tickets_reopened;
    json.optional_float_field("reopen_rate", if handled != 0 { Some(state.tickets_reopened as f64 / handled as f64 * 100.0) } else { None });
    survey_kpis(&mut json, state, at_ms, response_days);
    let last_contact = state.contact_ms.max(state.negative_contact_ms);
    json.optional_float_field("days_since_csm_contact", days_since(last_contact, at_ms));
    let pulse_valid = state.pulse_rating != 0 && at_ms < state.pulse_expires_ms;
    json.optional_int_field("csm_pulse", if pulse_valid { Some(state.pulse_rating) } else { None });
    json.bool_field("needs_fresh_pulse", state.pulse_rating != 0 && at_ms >= state.pulse_expires_ms);
    let (sent, opened, clicked) = email_totals(state, at_ms - 90 * DAY_MS, at_ms);
    json.int_field("emails_sent_90d", sent);
    json.optional_float_field("email_open_rate", share(opened, sent));
    json.optional_float_field("email_click_rate", share(clicked, sent));
    json.optional_float_field("email_reactivity", share(clicked, opened));
    json.bool_field("email_unsubscribed", state.email_unsubscribed_ms != 0);
    json.int_field("failed_payments_30d", window_total(state, PAYMENTS_FAILED, at_ms, 30));
    let overdue: Vec<i64> = state.unpaid_invoices.iter().filter(|invoice| invoice.due_ms < at_ms).map(|invoice| invoice.due_ms).collect();
    json.int_field("overdue_invoices", overdue.len() as i64);
    let most_overdue = overdue.iter().map(|due| (at_ms - due) as f64 / DAY_MS as f64).fold(None, |most: Option<f64>, days| Some(most.map_or(days, |m| if days > m { days } else { m })));
    json.float_field("max_days_overdue", most_overdue.unwrap_or(0.0));
    json.float_field("mrr", state.mrr);
    json.optional_float_field("mrr_growth", if state.previous_mrr != 0.0 { Some((state.mrr - state.previous_mrr) / state.previous_mrr * 100.0) } else { None });
    let revenue_90d = window_total(state, REVENUE_CENTS, at_ms, 90) as f64 / 100.0;
    json.float_field("revenue_90d", revenue_90d);
    json.optional_float_field("ltv", lifetime_value(revenue_90d, window_total(state, PURCHASES, at_ms, 90), 90, churn_risk));
    let fresh = new_categories(state, at_ms - 30 * DAY_MS, at_ms);
    json.int_field("new_categories_30d", fresh);
    json.bool_field("upsell_30d", fresh > 0 && 0 < state.first_purchase_ms && state.first_purchase_ms < at_ms - 30 * DAY_MS);
    json.key("score_change_since_csm_contact");
    json.optional_float(score_change_since_contact(state));
    json.raw("}");
    json.bytes
}

fn days_since(moment_ms: i64, at_ms: i64) -> Option<f64> {
    if moment_ms != 0 { Some((at_ms - moment_ms) as f64 / DAY_MS as f64) } else { None }
}

/// `scoring.kpis.customer_lifetime_value`.
fn lifetime_value(revenue: f64, orders: i64, window_days: i64, churn_risk: Option<f64>) -> Option<f64> {
    let risk = churn_risk?;
    if orders <= 0 {
        return None;
    }
    let lifetime = if risk <= 1.0 / MAX_LIFETIME_PERIODS { MAX_LIFETIME_PERIODS } else { 1.0 / risk };
    Some(revenue / orders as f64 * ((orders * 30) as f64 / window_days as f64) * lifetime)
}

/// nps, csat, ces, customer_loyalty_index, customer_secure and survey_response_rate.
fn survey_kpis(json: &mut Json, state: &CustomerState, at_ms: i64, response_days: f64) {
    let answers = recent_answers(&state.surveys, at_ms - 90 * DAY_MS, at_ms);
    let known: Vec<usize> = answers.by_survey[0].iter().filter_map(|response| nps_category(response)).collect();
    let nps = if known.is_empty() {
        None
    } else {
        let promoters = known.iter().filter(|category| **category == 0).count() as i64;
        let detractors = known.iter().filter(|category| **category == 2).count() as i64;
        Some((promoters - detractors) as f64 / known.len() as f64 * 100.0)
    };
    json.optional_float_field("nps", nps);
    let csat: Vec<f64> = answers.by_survey[1].iter().map(|response| 1.0 + 4.0 * answer_share(response)).collect();
    let satisfied = csat.iter().filter(|answer| **answer >= 4.0).count();
    json.optional_float_field("csat", if csat.is_empty() { None } else { Some(satisfied as f64 / csat.len() as f64 * 100.0) });
    let ces: Vec<f64> = answers.by_survey[2].iter().map(|r| 1.0 + 6.0 * (r.score - r.scale_min) / (r.scale_max - r.scale_min)).collect();
    json.optional_float_field("ces", mean(&ces));
    let points: Vec<f64> = answers.by_survey[3].iter().map(|response| loyalty_points(response)).collect();
    json.optional_float_field("customer_loyalty_index", mean(&points));
    json.key("customer_secure");
    match answers.secure {
        Some(secure) => json.raw(if secure { "true" } else { "false" }),
        None => json.raw("null"),
    }
    json.raw(",");
    let (answered, missed) = invitation_outcomes(state, at_ms - 90 * DAY_MS, at_ms, response_days);
    let rate = if answered + missed == 0 { None } else { Some(answered as f64 / (answered + missed) as f64 * 100.0) };
    json.optional_float_field("survey_response_rate", rate);
}
