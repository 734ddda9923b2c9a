//! Workloads of more than one job: dependencies between jobs (`after`) and arrays, whose
//! members form a group with one id, one aggregate state and one progress.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::spec::{FieldError, SubmitRequest};
use crate::JobState;

/// Most members of one array (the same as a batch submit: one transaction).
pub const MAX_ARRAY: u32 = 10_000;
/// Most dependencies one job may name.
pub const MAX_AFTER: usize = 100;

/// How a dependency must end for the job that waits on it to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DepCondition {
    /// It succeeded (`afterok`). Any other end cancels the waiting job.
    #[default]
    Ok,
    /// It ended, however (`afterany`).
    Any,
    /// It failed, timed out or was canceled (`afternotok`). A success cancels the
    /// waiting job.
    Failed,
}

impl DepCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            DepCondition::Ok => "ok",
            DepCondition::Any => "any",
            DepCondition::Failed => "failed",
        }
    }

    /// Whether a dependency in `state` meets the condition: `None` while it has not
    /// ended, then `Some(true)` or `Some(false)` for good.
    pub fn met_by(self, state: JobState) -> Option<bool> {
        if !state.is_terminal() {
            return None;
        }
        let ok = state == JobState::Succeeded;
        Some(match self {
            DepCondition::Ok => ok,
            DepCondition::Any => true,
            DepCondition::Failed => !ok,
        })
    }
}

impl std::str::FromStr for DepCondition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ok" => Ok(DepCondition::Ok),
            "any" => Ok(DepCondition::Any),
            "failed" => Ok(DepCondition::Failed),
            _ => Err(format!(
                "unknown condition {s:?}; expected ok, any or failed"
            )),
        }
    }
}

/// One job (or every member of a group) that a job waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    /// A job id, `key:K` for the job with idempotency key K (also one in the same
    /// batch), or a group id (every member must meet the condition).
    pub job: String,
    #[serde(default)]
    pub condition: DepCondition,
}

impl std::str::FromStr for Dependency {
    type Err = String;
    /// `JOB[:ok|any|failed]`, the command line's form.
    fn from_str(s: &str) -> Result<Self, String> {
        let (job, condition) = match s.rsplit_once(':') {
            Some((job, cond)) if matches!(cond, "ok" | "any" | "failed") => {
                (job, cond.parse().expect("one of the three"))
            }
            _ => (s, DepCondition::Ok),
        };
        if job.is_empty() || job == "key:" {
            return Err(format!("{s:?} names no job; expected JOB[:ok|any|failed]"));
        }
        Ok(Dependency {
            job: job.to_string(),
            condition,
        })
    }
}

/// Checks a job's `after` list.
pub fn check_after(errs: &mut Vec<FieldError>, after: &[Dependency]) {
    if after.len() > MAX_AFTER {
        errs.push(FieldError::new(
            "after",
            format!("names {} jobs; at most {MAX_AFTER}", after.len()),
        ));
    }
    for (i, dep) in after.iter().enumerate() {
        if dep.job.is_empty() || dep.job == "key:" {
            errs.push(FieldError::new(
                format!("after[{i}].job"),
                "must name a job",
            ));
        }
        if after[..i].iter().any(|d| d.job == dep.job) {
            errs.push(FieldError::new(
                format!("after[{i}].job"),
                format!("{:?} is named twice", dep.job),
            ));
        }
    }
}

/// The members of an array: indexes `first .. first + count`, at most `parallelism`
/// running at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArraySpec {
    /// The first member's index (`DROVER_ARRAY_INDEX`). Default 0.
    #[serde(default)]
    pub first: u32,
    /// How many members (1 to 10,000).
    #[schema(minimum = 1, maximum = 10000)]
    pub count: u32,
    /// At most this many members leased or running at once. None: no limit.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub parallelism: Option<u32>,
}

impl ArraySpec {
    /// Problems with the numbers, each as a field error under `array.`.
    pub fn check(&self, errs: &mut Vec<FieldError>) {
        if self.count == 0 || self.count > MAX_ARRAY {
            errs.push(FieldError::new(
                "array.count",
                format!("must be between 1 and {MAX_ARRAY}"),
            ));
        }
        if self.first.checked_add(self.count).is_none() {
            errs.push(FieldError::new("array.first", "first + count is too large"));
        }
        if matches!(self.parallelism, Some(p) if p == 0 || p > MAX_ARRAY) {
            errs.push(FieldError::new(
                "array.parallelism",
                format!("must be between 1 and {MAX_ARRAY}"),
            ));
        }
    }
}

impl std::str::FromStr for ArraySpec {
    type Err = String;
    /// `FIRST-LAST[%PARALLELISM]` (Slurm's form, `0-99%10`) or `COUNT[%PARALLELISM]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("{s:?} is not an array; expected FIRST-LAST[%PARALLEL] (0-99%10) or COUNT[%PARALLEL]")
        };
        let (range, parallelism) = match s.split_once('%') {
            Some((r, p)) => (r, Some(p.parse::<u32>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let (first, count) = match range.split_once('-') {
            Some((a, b)) => {
                let first: u32 = a.parse().map_err(|_| bad())?;
                let last: u32 = b.parse().map_err(|_| bad())?;
                if last < first {
                    return Err(format!("{s:?}: the last index is below the first"));
                }
                (first, last - first + 1)
            }
            None => (0, range.parse().map_err(|_| bad())?),
        };
        Ok(ArraySpec {
            first,
            count,
            parallelism,
        })
    }
}

/// `POST /v1/groups`: an array of jobs made from one spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupSubmit {
    /// The spec of every member; each gets `DROVER_ARRAY_INDEX` and `DROVER_GROUP_ID` in
    /// its env and is named `NAME[INDEX]`. Its `idempotency_key` is the group's: the
    /// same key returns the same group.
    pub job: SubmitRequest,
    pub array: ArraySpec,
}

impl GroupSubmit {
    /// The member spec and the array, or every problem at once (fields under `array.`
    /// and `job.`).
    pub fn validate(
        self,
        now: DateTime<Utc>,
    ) -> Result<(crate::ValidJob, ArraySpec), Vec<FieldError>> {
        let mut errors = Vec::new();
        self.array.check(&mut errors);
        if self.array.parallelism.is_some() && self.job.concurrency_key.is_some() {
            errors.push(FieldError::new(
                "array.parallelism",
                "an array's parallelism is its members' concurrency key; give either parallelism or job.concurrency_key, not both",
            ));
        }
        match self.job.validate(now) {
            Ok(job) if errors.is_empty() => Ok((job, self.array)),
            Ok(_) => Err(errors),
            Err(errs) => {
                errors.extend(errs.into_iter().map(|e| e.within("job.")));
                Err(errors)
            }
        }
    }
}

/// A group's state, from its members': `waiting` or `queued` while all its members
/// are, `running` once any started and until all ended; then `succeeded` when all did,
/// `failed` when any failed or timed out, else `canceled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupState {
    Waiting,
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl GroupState {
    /// The state of a group whose members are in these states (`counts` by state).
    pub fn of(counts: &BTreeMap<JobState, u64>) -> GroupState {
        let n = |s: JobState| counts.get(&s).copied().unwrap_or(0);
        let total: u64 = counts.values().sum();
        let ended: u64 = JobState::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| n(*s))
            .sum();
        if ended < total {
            return if n(JobState::Waiting) == total {
                GroupState::Waiting
            } else if n(JobState::Waiting) + n(JobState::Queued) == total {
                GroupState::Queued
            } else {
                GroupState::Running
            };
        }
        if n(JobState::Succeeded) == total {
            GroupState::Succeeded
        } else if n(JobState::Failed) + n(JobState::TimedOut) > 0 {
            GroupState::Failed
        } else {
            GroupState::Canceled
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Waiting => "waiting",
            GroupState::Queued => "queued",
            GroupState::Running => "running",
            GroupState::Succeeded => "succeeded",
            GroupState::Failed => "failed",
            GroupState::Canceled => "canceled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            GroupState::Succeeded | GroupState::Failed | GroupState::Canceled
        )
    }
}

impl std::fmt::Display for GroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A group as the read API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub state: GroupState,
    pub first: u32,
    pub count: u32,
    pub parallelism: Option<u32>,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Members by state (states with none are left out).
    pub counts: BTreeMap<JobState, u64>,
    /// Mean progress of the members: an ended member counts 100, a running one its last
    /// reported percent, one not started 0.
    pub percent: f64,
}

/// A page of groups, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupPage {
    pub groups: Vec<Group>,
    pub next_cursor: Option<String>,
}

/// Filters of `GET /v1/groups`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListGroupsQuery {
    /// Page size, 1..=1000, default 50.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// What `POST /v1/groups/{id}/cancel` and `/retry` did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupAction {
    /// Members that were changed (canceled or asked to stop; put back in the queue).
    pub changed: u64,
    pub group: Group,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_parse_in_slurm_form_and_as_a_count() {
        let a: ArraySpec = "0-99%10".parse().unwrap();
        assert_eq!((a.first, a.count, a.parallelism), (0, 100, Some(10)));
        let a: ArraySpec = "5-7".parse().unwrap();
        assert_eq!((a.first, a.count, a.parallelism), (5, 3, None));
        let a: ArraySpec = "12".parse().unwrap();
        assert_eq!((a.first, a.count), (0, 12));
        assert!("9-3".parse::<ArraySpec>().unwrap_err().contains("below"));
        for bad in ["", "a-b", "1-2%x", "-3", "1-"] {
            assert!(bad.parse::<ArraySpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn dependencies_parse_with_an_optional_condition() {
        let d: Dependency = "abc".parse().unwrap();
        assert_eq!((d.job.as_str(), d.condition), ("abc", DepCondition::Ok));
        let d: Dependency = "key:nightly:2026:any".parse().unwrap();
        assert_eq!(
            (d.job.as_str(), d.condition),
            ("key:nightly:2026", DepCondition::Any)
        );
        let d: Dependency = "key:a:b".parse().unwrap();
        assert_eq!(d.job, "key:a:b");
        assert!(":failed".parse::<Dependency>().is_err());
    }

    #[test]
    fn conditions_decide_only_once_the_dependency_ended() {
        use JobState::*;
        for c in [DepCondition::Ok, DepCondition::Any, DepCondition::Failed] {
            for s in [Waiting, Queued, Leased, Running] {
                assert_eq!(c.met_by(s), None);
            }
        }
        assert_eq!(DepCondition::Ok.met_by(Succeeded), Some(true));
        assert_eq!(DepCondition::Ok.met_by(Canceled), Some(false));
        assert_eq!(DepCondition::Failed.met_by(TimedOut), Some(true));
        assert_eq!(DepCondition::Failed.met_by(Succeeded), Some(false));
        assert_eq!(DepCondition::Any.met_by(Failed), Some(true));
    }

    #[test]
    fn a_group_state_follows_its_members() {
        use JobState::*;
        let of = |v: &[(JobState, u64)]| GroupState::of(&v.iter().copied().collect());
        assert_eq!(of(&[(Waiting, 3)]), GroupState::Waiting);
        assert_eq!(of(&[(Waiting, 1), (Queued, 2)]), GroupState::Queued);
        assert_eq!(of(&[(Queued, 2), (Succeeded, 1)]), GroupState::Running);
        assert_eq!(of(&[(Succeeded, 3)]), GroupState::Succeeded);
        assert_eq!(of(&[(Succeeded, 2), (TimedOut, 1)]), GroupState::Failed);
        assert_eq!(of(&[(Succeeded, 2), (Canceled, 1)]), GroupState::Canceled);
    }
}
