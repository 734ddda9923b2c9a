//! drover's pure domain: jobs, attempts, agents, the job state machine, scheduling
//! policy and the wire types of the HTTP API. Nothing here does IO; time and randomness
//! come in as arguments so every rule can be tested as a plain function.

pub mod api;
pub mod backoff;
pub mod files;
pub mod group;
pub mod labels;
pub mod schedule;
pub mod spec;
pub mod state;
pub mod template;

pub use spec::{Exec, Priority, SubmitRequest, ValidJob};
pub use state::{transition, Event, InvalidTransition, JobState, Outcome};
