//! The commands: `run` (server, agent, up), `jobs` (submit and friends), `admin`.

pub mod admin;
pub mod jobs;
pub mod run;
