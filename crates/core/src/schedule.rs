//! Schedules: a cron expression in a time zone that submits a job (a spec or a template)
//! at each tick, with policies for a tick whose previous job still runs (overlap) and
//! for ticks missed while no server ran (catch-up). Deciding which ticks are due is a
//! plain function of the clock given to it; the store makes each tick happen once.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::spec::{FieldError, SubmitRequest};

/// A tick this late (or less) is on time; older ones were missed (the server was down).
pub const ON_TIME_MS: i64 = 60_000;
/// Most missed ticks `catch_up: all` submits.
pub const MAX_CATCH_UP: u32 = 1_000;
/// How many next run times a schedule shows.
pub const NEXT_SHOWN: usize = 5;
/// Missed ticks `catch_up: all` submits unless told otherwise.
pub const DEFAULT_CATCH_UP_MAX: u32 = 10;

/// What a tick does while the job of the previous tick has not ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Submit nothing for this tick.
    #[default]
    Skip,
    /// Submit a job that waits for the previous one to end (`after: PREVIOUS:any`).
    Queue,
    /// Cancel the previous job, then submit.
    CancelPrevious,
}

/// What happens to ticks missed while no server ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Only a tick that is on time (under a minute late) submits.
    None,
    /// The latest missed tick submits once.
    #[default]
    One,
    /// Every missed tick submits, the latest `catch_up_max` of them.
    All,
}

macro_rules! text_enum {
    ($t:ty, $($v:ident => $s:literal),+) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
        }
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$v),)+
                    _ => Err(format!("{s:?} is not one of {}", [$($s),+].join(", "))),
                }
            }
        }
    };
}
text_enum!(Overlap, Skip => "skip", Queue => "queue", CancelPrevious => "cancel_previous");
text_enum!(CatchUp, None => "none", One => "one", All => "all");

/// A template a schedule submits from, with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTemplate {
    pub name: String,
    /// Which version (default: the latest at each tick).
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, Value>,
}

/// `POST /v1/schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleCreate {
    /// Letters, digits, '-', '_' and '.'.
    pub name: String,
    /// `MIN HOUR DAY MONTH WEEKDAY` (`*/5 * * * *`), or with seconds first (6 fields).
    pub cron: String,
    /// IANA time zone the expression is read in (`Europe/Lisbon`). Default UTC.
    #[serde(default)]
    pub tz: Option<String>,
    /// The job each tick submits; give this or `template`.
    #[serde(default)]
    pub job: Option<SubmitRequest>,
    #[serde(default)]
    pub template: Option<ScheduleTemplate>,
    #[serde(default)]
    pub overlap: Overlap,
    #[serde(default)]
    pub catch_up: CatchUp,
    /// With `catch_up: all`: at most this many missed ticks (1 to 1,000; default 10).
    #[serde(default)]
    pub catch_up_max: Option<u32>,
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Schedule {
    pub name: String,
    pub cron: String,
    pub tz: String,
    pub job: Option<SubmitRequest>,
    pub template: Option<ScheduleTemplate>,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub catch_up_max: u32,
    pub paused: bool,
    pub created_at: DateTime<Utc>,
    /// The tick the server waits for (none while paused).
    pub next_tick_at: Option<DateTime<Utc>>,
    /// The next run times, the first being `next_tick_at`.
    pub next_runs: Vec<DateTime<Utc>>,
    pub last_tick_at: Option<DateTime<Utc>>,
    /// The job the last tick submitted.
    pub last_job_id: Option<String>,
    /// Why the last tick submitted nothing (overlap skip, a template gone), if it did not.
    pub last_error: Option<String>,
}

impl Schedule {
    /// Its expression, parsed in its time zone.
    pub fn parsed(&self) -> Result<Cron, Vec<FieldError>> {
        Cron::parse(&self.cron, &self.tz)
    }
}

/// Schedules, by name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}

/// A parsed cron expression in its time zone.
#[derive(Debug, Clone)]
pub struct Cron {
    schedule: cron::Schedule,
    tz: chrono_tz::Tz,
}

impl Cron {
    /// Parses `expr` (5 fields, or 6 with seconds first) in time zone `tz`.
    pub fn parse(expr: &str, tz: &str) -> Result<Cron, Vec<FieldError>> {
        let mut errs = Vec::new();
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let full = match fields.len() {
            5 | 6 => {
                // The `cron` crate counts weekdays 1-7 from Sunday; crontab 0-7 (0 and 7
                // are Sunday).
                let (last, rest) = fields.split_last().expect("five or six fields");
                match crontab_weekdays(last) {
                    Ok(days) => {
                        let seconds = if fields.len() == 5 { "0 " } else { "" };
                        Some(format!("{seconds}{} {days}", rest.join(" ")))
                    }
                    Err(e) => {
                        errs.push(FieldError::new("cron", e));
                        None
                    }
                }
            }
            n => {
                errs.push(FieldError::new(
                    "cron",
                    format!("has {n} fields; give MIN HOUR DAY MONTH WEEKDAY (e.g. */5 * * * *), or 6 with seconds first"),
                ));
                None
            }
        };
        let schedule = full.and_then(|full| {
            cron::Schedule::from_str(&full)
                .map_err(|e| errs.push(FieldError::new("cron", format!("{expr:?}: {e}"))))
                .ok()
        });
        let tz = tz
            .parse::<chrono_tz::Tz>()
            .map_err(|_| {
                errs.push(FieldError::new(
                    "tz",
                    format!("{tz:?} is not an IANA time zone (e.g. UTC, Europe/Lisbon)"),
                ))
            })
            .ok();
        match (schedule, tz) {
            (Some(schedule), Some(tz)) if errs.is_empty() => Ok(Cron { schedule, tz }),
            _ => Err(errs),
        }
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&t.with_timezone(&self.tz))
            .next()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The next `n` ticks from `first` on (`first` included when it is a tick time).
    pub fn upcoming(&self, first: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let from = first - chrono::Duration::milliseconds(1);
        self.schedule
            .after(&from.with_timezone(&self.tz))
            .take(n)
            .map(|d| d.with_timezone(&Utc))
            .collect()
    }

    /// What a tick pass at `now` does for a schedule waiting for `next`: the ticks to
    /// submit (oldest first) and the tick to wait for afterwards. Ticks at or before
    /// `now` are due; the policy picks among them.
    pub fn due(
        &self,
        next: DateTime<Utc>,
        now: DateTime<Utc>,
        catch_up: CatchUp,
        catch_up_max: u32,
    ) -> (Vec<DateTime<Utc>>, DateTime<Utc>) {
        // Keep only what a policy may need: the latest `catch_up_max` due ticks.
        let keep = match catch_up {
            CatchUp::All => catch_up_max.max(1) as usize,
            _ => 1,
        };
        let mut due = std::collections::VecDeque::new();
        let mut t = next;
        while t <= now {
            due.push_back(t);
            if due.len() > keep {
                due.pop_front();
            }
            match self.next_after(t) {
                Some(n) => t = n,
                None => break,
            }
        }
        let after = if t > now { t } else { far_future() };
        let due: Vec<_> = due.into();
        let picked = match catch_up {
            CatchUp::None => due
                .into_iter()
                .filter(|d| (now - *d).num_milliseconds() <= ON_TIME_MS)
                .collect(),
            _ => due,
        };
        (picked, after)
    }
}

/// A crontab weekday field (0-7, 0 and 7 Sunday; names; `*`; lists, ranges, steps) in
/// the `cron` crate's numbering (1-7 from Sunday): numbers are written out as a list,
/// names and `*` (with any step) mean the same in both.
fn crontab_weekdays(field: &str) -> Result<String, String> {
    let bad = |why: &str| format!("weekday field {field:?}: {why}");
    let mut out = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (item, None),
        };
        if range == "*" || range == "?" || range.chars().any(|c| c.is_ascii_alphabetic()) {
            out.push(item.to_string());
            continue;
        }
        let num = |s: &str| match s.parse::<u32>() {
            Ok(n) if n <= 7 => Ok(n),
            _ => Err(bad("weekdays are 0-7 (0 and 7 are Sunday) or SUN-SAT")),
        };
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None if step.is_some() => (num(range)?, 7),
            None => (num(range)?, num(range)?),
        };
        let step = match step {
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| bad("a step is a number above 0"))?,
            None => 1,
        };
        if last < first {
            return Err(bad("a range runs from its lower day to its higher"));
        }
        out.extend(
            (first..=last)
                .step_by(step)
                .map(|d| (d % 7 + 1).to_string()),
        );
    }
    Ok(out.join(","))
}

/// A tick that never comes (an expression with no more ticks, e.g. a past year).
fn far_future() -> DateTime<Utc> {
    DateTime::<Utc>::MAX_UTC
}

impl ScheduleCreate {
    /// The time zone the expression is read in.
    pub fn tz(&self) -> &str {
        self.tz.as_deref().unwrap_or("UTC")
    }

    /// How many missed ticks a catch-up submits at most (`catch_up: all` keeps up to
    /// `catch_up_max`, default 10; the others one).
    pub fn catch_up_max(&self) -> u32 {
        match self.catch_up {
            CatchUp::All => self.catch_up_max.unwrap_or(DEFAULT_CATCH_UP_MAX),
            _ => self.catch_up_max.unwrap_or(1),
        }
    }

    /// Every problem at once, the job's (as a tick would make it) under `job.`; the
    /// parsed expression when there are none. A template is checked by the caller, who
    /// can read templates.
    pub fn check(&self, now: DateTime<Utc>) -> Result<Cron, Vec<FieldError>> {
        let mut errs = Vec::new();
        if !crate::template::is_template_name(&self.name) {
            errs.push(FieldError::new(
                "name",
                format!(
                    "must be 1 to {} letters, digits, '-', '_' or '.'",
                    crate::template::MAX_TEMPLATE_NAME
                ),
            ));
        }
        let cron = Cron::parse(&self.cron, self.tz());
        if let Err(e) = &cron {
            errs.extend(e.iter().cloned());
        }
        match (&self.job, &self.template) {
            (None, None) => errs.push(FieldError::new("job", "give a job or a template")),
            (Some(_), Some(_)) => errs.push(FieldError::new(
                "template",
                "give a job or a template, not both",
            )),
            _ => {}
        }
        if let Some(job) = &self.job {
            if job.idempotency_key.is_some() {
                errs.push(FieldError::new(
                    "job.idempotency_key",
                    "each tick's job gets its own key, schedule:NAME:TICK",
                ));
            }
            if !job.secrets.is_empty() {
                errs.push(FieldError::new(
                    "job.secrets",
                    "a schedule cannot keep secrets: its job is shown to every reader of the schedule (pass them from a file or service the job reads)",
                ));
            }
        }
        if matches!(self.catch_up_max, Some(n) if n == 0 || n > MAX_CATCH_UP) {
            errs.push(FieldError::new(
                "catch_up_max",
                format!("must be between 1 and {MAX_CATCH_UP}"),
            ));
        }
        if self.catch_up_max.is_some() && self.catch_up != CatchUp::All {
            errs.push(FieldError::new(
                "catch_up_max",
                "only counts with catch_up: all",
            ));
        }
        if let Some(job) = &self.job {
            if let Err(e) = job.clone().validate(now) {
                errs.extend(e.into_iter().map(|e| e.within("job.")));
            }
        }
        match (cron, errs.is_empty()) {
            (Ok(c), true) => Ok(c),
            _ => Err(errs),
        }
    }
}

/// The idempotency key of a tick's job: a tick submits at most one job, whichever
/// server runs it.
pub fn tick_key(schedule: &str, tick: DateTime<Utc>) -> String {
    format!("schedule:{schedule}:{}", tick.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_fields_read_in_their_time_zone_across_a_dst_change() {
        let c = Cron::parse("30 2 * * *", "Europe/Lisbon").unwrap();
        // Winter: Lisbon is UTC+0; summer (from 29 March 2026): UTC+1.
        assert_eq!(
            c.next_after(at("2026-01-10T00:00:00Z")),
            Some(at("2026-01-10T02:30:00Z"))
        );
        assert_eq!(
            c.next_after(at("2026-07-10T00:00:00Z")),
            Some(at("2026-07-10T01:30:00Z"))
        );
        let every5 = Cron::parse("*/5 * * * *", "UTC").unwrap();
        assert_eq!(
            every5.upcoming(at("2026-01-01T00:05:00Z"), 3),
            [
                at("2026-01-01T00:05:00Z"),
                at("2026-01-01T00:10:00Z"),
                at("2026-01-01T00:15:00Z")
            ]
        );
    }

    #[test]
    fn weekdays_are_read_as_crontab_numbers_them_with_sunday_0_and_7() {
        // 2026-01-04 is a Sunday.
        let weekdays = Cron::parse("0 3 * * 1-5", "UTC").unwrap();
        assert_eq!(
            weekdays.next_after(at("2026-01-03T12:00:00Z")),
            Some(at("2026-01-05T03:00:00Z")),
            "Monday, not Sunday"
        );
        assert_eq!(
            weekdays.next_after(at("2026-01-09T12:00:00Z")),
            Some(at("2026-01-12T03:00:00Z")),
            "after Friday comes Monday"
        );
        for sunday in ["0 3 * * 0", "0 3 * * 7", "0 3 * * SUN", "0 0 3 * * 0"] {
            let c = Cron::parse(sunday, "UTC").unwrap();
            assert_eq!(
                c.next_after(at("2026-01-01T00:00:00Z")),
                Some(at("2026-01-04T03:00:00Z")),
                "{sunday}"
            );
        }
        let even = Cron::parse("0 3 * * */2", "UTC").unwrap();
        assert_eq!(
            even.next_after(at("2026-01-04T12:00:00Z")),
            Some(at("2026-01-06T03:00:00Z")),
            "Sunday, Tuesday, Thursday, Saturday"
        );
        let weekend = Cron::parse("0 3 * * 5-7", "UTC").unwrap();
        assert_eq!(
            weekend.next_after(at("2026-01-04T12:00:00Z")),
            Some(at("2026-01-09T03:00:00Z")),
            "Friday to Sunday"
        );
        assert!(Cron::parse("0 3 * * 8", "UTC").is_err());
        assert!(Cron::parse("0 3 * * 5-2", "UTC").is_err());
    }

    #[test]
    fn bad_expressions_and_zones_are_named_together() {
        let errs = Cron::parse("61 * * *", "Mars/Base").unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["cron", "tz"]);
        assert!(Cron::parse("61 * * * *", "UTC").is_err());
        assert!(Cron::parse("*/2 * * * * *", "UTC").is_ok());
    }

    #[test]
    fn catch_up_policies_pick_among_missed_ticks() {
        let c = Cron::parse("* * * * *", "UTC").unwrap();
        let next = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        // Down for ten minutes and a half: ticks 00:00 … 00:10 are due.
        let now = next + chrono::Duration::seconds(630);
        let after = Utc.with_ymd_and_hms(2026, 1, 1, 0, 11, 0).unwrap();
        let (none, n1) = c.due(next, now, CatchUp::None, 10);
        assert_eq!(
            none,
            [after - chrono::Duration::minutes(1)],
            "00:10 is 30 s late: on time"
        );
        assert_eq!(n1, after);
        let hourly = Cron::parse("0 * * * *", "UTC").unwrap();
        let (missed, _) = hourly.due(next, now, CatchUp::None, 10);
        assert!(missed.is_empty(), "00:00 is ten minutes late: missed");
        let (late, _) = hourly.due(next, now, CatchUp::One, 10);
        assert_eq!(late, [next]);
        let (one, _) = c.due(next, now, CatchUp::One, 10);
        assert_eq!(one, [after - chrono::Duration::minutes(1)]);
        let (all, _) = c.due(next, now, CatchUp::All, 3);
        assert_eq!(all.len(), 3);
        assert_eq!(all[2], after - chrono::Duration::minutes(1));
        // On time: the one tick just passed.
        let (fresh, n2) = c.due(
            after,
            after + chrono::Duration::seconds(1),
            CatchUp::None,
            10,
        );
        assert_eq!(
            (fresh, n2),
            (vec![after], after + chrono::Duration::minutes(1))
        );
        // Nothing due yet.
        let (nothing, same) = c.due(
            after,
            after - chrono::Duration::seconds(1),
            CatchUp::All,
            10,
        );
        assert!(nothing.is_empty());
        assert_eq!(same, after);
    }
}
