//! The job state machine: the only place that decides which state a job moves to.
//!
//! `[waiting →] queued → leased → running → succeeded | failed | canceled | timed_out`.
//! A job with dependencies is `waiting` until they end; then it is queued, or canceled
//! when one ended in a way its condition refuses. A job waiting for its `run_at` or a
//! retry backoff stays `queued`. Cancelling a leased or running job
//! is a request: the state stays until the agent confirms with `Finish(Canceled)`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a job is in its life. Terminal states never change again except by an explicit
/// `Retry`, which starts a new life for the same job.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waits for the jobs it depends on to end.
    Waiting,
    Queued,
    Leased,
    Running,
    Succeeded,
    Failed,
    Canceled,
    TimedOut,
}

impl JobState {
    /// Every state, in life order; handy for tables and metrics.
    pub const ALL: [JobState; 8] = [
        JobState::Waiting,
        JobState::Queued,
        JobState::Leased,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Canceled,
        JobState::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Queued => "queued",
            JobState::Leased => "leased",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
            JobState::TimedOut => "timed_out",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Canceled | JobState::TimedOut
        )
    }

    /// Leased or running: an agent holds the job.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Leased | JobState::Running)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown state {s:?}; expected one of waiting, queued, leased, running, succeeded, failed, canceled, timed_out"
                )
            })
    }
}

/// How an attempt ended, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Canceled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Canceled => "canceled",
        }
    }
}

/// Something that happens to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An agent leased the job (a new attempt).
    Lease,
    /// The agent started the job's process.
    Start,
    /// The attempt ended; `retry` says whether the policy wants another attempt.
    Finish { outcome: Outcome, retry: bool },
    /// The lease expired or the agent gave the attempt up; `retry` as above.
    Lost { retry: bool },
    /// A user asked to cancel.
    Cancel,
    /// A user asked to run a finished job again.
    Retry,
    /// Every job a waiting job depends on ended as its condition asks.
    DepsMet,
    /// A job a waiting job depends on ended in a way its condition refuses.
    DepsFailed,
}

/// A transition the state machine does not allow; the message is safe to show users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} a job that is {from}")]
pub struct InvalidTransition {
    pub from: JobState,
    pub event: &'static str,
}

fn event_name(event: &Event) -> &'static str {
    match event {
        Event::Lease => "lease",
        Event::Start => "start",
        Event::Finish { .. } => "finish",
        Event::Lost { .. } => "lose",
        Event::Cancel => "cancel",
        Event::Retry => "retry",
        Event::DepsMet => "release",
        Event::DepsFailed => "fail the dependencies of",
    }
}

/// The one transition function. `Cancel` of a leased or running job returns the same
/// state: the caller records `cancel_requested` and waits for the agent's `Finish`.
pub fn transition(from: JobState, event: Event) -> Result<JobState, InvalidTransition> {
    use JobState::*;
    let next = match (from, event) {
        (Queued, Event::Lease) => Some(Leased),
        (Leased, Event::Start) => Some(Running),
        (Leased | Running, Event::Finish { outcome, retry }) => Some(match outcome {
            Outcome::Succeeded => Succeeded,
            Outcome::Canceled => Canceled,
            Outcome::Failed if retry => Queued,
            Outcome::Failed => Failed,
            Outcome::TimedOut if retry => Queued,
            Outcome::TimedOut => TimedOut,
        }),
        (Leased | Running, Event::Lost { retry: true }) => Some(Queued),
        (Leased | Running, Event::Lost { retry: false }) => Some(Failed),
        (Queued | Waiting, Event::Cancel) => Some(Canceled),
        (Waiting, Event::DepsMet) => Some(Queued),
        (Waiting, Event::DepsFailed) => Some(Canceled),
        (Leased | Running, Event::Cancel) => Some(from),
        (Succeeded | Failed | Canceled | TimedOut, Event::Retry) => Some(Queued),
        _ => None,
    };
    next.ok_or(InvalidTransition {
        from,
        event: event_name(&event),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;

    fn events() -> Vec<Event> {
        let mut v = vec![
            Event::Lease,
            Event::Start,
            Event::Cancel,
            Event::Retry,
            Event::DepsMet,
            Event::DepsFailed,
        ];
        for retry in [false, true] {
            v.push(Event::Lost { retry });
            for outcome in [
                Outcome::Succeeded,
                Outcome::Failed,
                Outcome::TimedOut,
                Outcome::Canceled,
            ] {
                v.push(Event::Finish { outcome, retry });
            }
        }
        v
    }

    /// The whole legal table; every pair not listed here must be refused.
    fn expected(from: JobState, event: Event) -> Option<JobState> {
        let fin = |o: Outcome, r: bool| Event::Finish {
            outcome: o,
            retry: r,
        };
        let table: Vec<(JobState, Event, JobState)> = {
            let mut t = vec![
                (Queued, Event::Lease, Leased),
                (Leased, Event::Start, Running),
                (Queued, Event::Cancel, Canceled),
                (Waiting, Event::Cancel, Canceled),
                (Waiting, Event::DepsMet, Queued),
                (Waiting, Event::DepsFailed, Canceled),
                (Leased, Event::Cancel, Leased),
                (Running, Event::Cancel, Running),
            ];
            for s in [Leased, Running] {
                for r in [false, true] {
                    t.push((s, fin(Outcome::Succeeded, r), Succeeded));
                    t.push((s, fin(Outcome::Canceled, r), Canceled));
                }
                t.push((s, fin(Outcome::Failed, false), Failed));
                t.push((s, fin(Outcome::Failed, true), Queued));
                t.push((s, fin(Outcome::TimedOut, false), TimedOut));
                t.push((s, fin(Outcome::TimedOut, true), Queued));
                t.push((s, Event::Lost { retry: true }, Queued));
                t.push((s, Event::Lost { retry: false }, Failed));
            }
            for s in [Succeeded, Failed, Canceled, TimedOut] {
                t.push((s, Event::Retry, Queued));
            }
            t
        };
        table
            .into_iter()
            .find(|(f, e, _)| *f == from && *e == event)
            .map(|(_, _, to)| to)
    }

    #[test]
    fn every_pair_matches_the_table() {
        let mut legal = 0;
        for from in JobState::ALL {
            for event in events() {
                let got = transition(from, event);
                match expected(from, event) {
                    Some(to) => {
                        legal += 1;
                        assert_eq!(got, Ok(to), "{from:?} + {event:?}");
                    }
                    None => assert!(got.is_err(), "{from:?} + {event:?} should be refused"),
                }
            }
        }
        assert_eq!(legal, 32);
    }

    #[test]
    fn terminal_states_only_leave_by_retry() {
        for from in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in events() {
                if event != Event::Retry {
                    assert!(transition(from, event).is_err());
                }
            }
        }
    }

    #[test]
    fn refusal_message_names_state_and_event() {
        let err = transition(Succeeded, Event::Cancel).unwrap_err();
        assert_eq!(err.to_string(), "cannot cancel a job that is succeeded");
    }

    #[test]
    fn state_round_trips_through_text() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!("done".parse::<JobState>().is_err());
    }
}
