//! The seam between an attempt's lifecycle (`attempt`: spool, workspace, inputs, start
//! report, logs, progress, result, finish) and the thing that runs the job. An executor
//! only knows how to make its workspace, start its job and say how the job ended:
//! `process` (shell, process and script jobs), `python` (function calls) and `docker`
//! (containers) are one file each, picked by one `match` on the exec kind in `attempt`.
//! Another executor (Kubernetes pods, say) is one more file.

use std::future::Future;
use std::io;
use std::time::Duration;

use drover_core::api::{Gpus, Lease};
use drover_core::Outcome;
use serde_json::Value;
use tokio::io::AsyncRead;
use tokio::sync::watch;

use crate::layout::AttemptFiles;
use crate::pipeline::LogPipeline;
use crate::process::StopReason;
use crate::recycle::WorkspacePool;

/// Stop requests for an attempt (see `process::Stopper`).
pub type StopRx = watch::Receiver<Option<StopReason>>;

/// One way of running a job.
pub trait Executor: Sync {
    /// The started job.
    type Job: RunningJob;

    /// Makes the attempt's empty workspace, from `pool` when it has one (blocking: the
    /// lifecycle runs it on a blocking thread with the spool's creation, one trip for
    /// both).
    fn prepare(files: &AttemptFiles, pool: &WorkspacePool) -> io::Result<()>;

    /// Starts the job in its prepared workspace with its inputs in place, recorded (see
    /// `fence`) so that an agent restarted after a crash can stop it. `logs` takes lines
    /// worth saying before it has started (a container's command line before a long
    /// pull); a stop request while starting may end the start.
    fn start(
        &self,
        logs: &LogPipeline,
        stop: &mut StopRx,
    ) -> impl Future<Output = Result<Started<Self::Job>, NotStarted>> + Send;

    /// The error to report for a failed job from its result, where the job's result says
    /// more than its exit code (a Python exception).
    fn failure(&self, _result: Option<&Value>) -> Option<String> {
        None
    }
}

/// A job that runs.
pub trait RunningJob: Send {
    /// Waits for the job to end, stopping it (SIGTERM, the lease's grace, SIGKILL) when it
    /// times out or a stop is requested; nothing of it may be left running after.
    fn supervise(
        &mut self,
        lease: &Lease,
        stop: &mut StopRx,
    ) -> impl Future<Output = Ending> + Send;

    /// Lets go of the job once its output has been read to the end (a container is
    /// removed unless the agent keeps them).
    fn release(self) -> impl Future<Output = ()> + Send;
}

/// What `start` hands the lifecycle.
pub struct Started<J> {
    pub job: J,
    /// The job's output, pumped into its log.
    pub stdout: Box<dyn AsyncRead + Unpin + Send>,
    pub stderr: Box<dyn AsyncRead + Unpin + Send>,
    /// Lines for the log, sent with the start report (what runs, GPU notes).
    pub notes: Vec<String>,
}

/// Why `start` did not start the job.
pub enum NotStarted {
    /// The job's error: it failed without running.
    Failed(String),
    /// A stop request came first.
    Stopped(StopReason),
}

/// How a started job ended, before the result file is read.
pub struct Ending {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub stopped: Option<StopReason>,
    /// For a container that asked for GPUs: whether it got them.
    pub gpus: Option<Gpus>,
}

/// The lease's timeout (from the start) and the grace between SIGTERM and SIGKILL.
pub fn limits(lease: &Lease) -> (Option<Duration>, Duration) {
    (
        lease.timeout_ms.map(Duration::from_millis),
        Duration::from_millis(lease.grace_ms),
    )
}

/// The outcome and error reported for a job the agent stopped.
pub fn stopped_outcome(reason: StopReason, lease: &Lease) -> (Outcome, String) {
    match reason {
        StopReason::TimedOut => {
            let ms = lease.timeout_ms.unwrap_or_default();
            (
                Outcome::TimedOut,
                format!("timed out after {}", human_ms(ms)),
            )
        }
        StopReason::Canceled => (Outcome::Canceled, "canceled by user".into()),
        StopReason::Shutdown => (Outcome::Canceled, "agent shutdown".into()),
        StopReason::ForceStop => (Outcome::Failed, "force-stop".into()),
        StopReason::Stale => (Outcome::Failed, "attempt is no longer current".into()),
        StopReason::LeaseLost => (
            Outcome::Failed,
            "lease_lost: the agent could not reach the server to renew its lease in time, so it stopped the job before the server could give it to another agent".into(),
        ),
    }
}

fn human_ms(ms: u64) -> String {
    match ms % 1000 {
        0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// Runs short blocking work on a lease's way to a started job (a workspace, a spawn):
/// on a multi-thread runtime in place, while the runtime moves this thread's other
/// tasks to another one, so the job does not wait for a blocking thread to wake up;
/// else on a blocking thread. A panic is the error, as a blocking thread's would be.
pub(crate) async fn in_place<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() != RuntimeFlavor::MultiThread {
        return tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| e.to_string());
    }
    tokio::task::block_in_place(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("task panicked: {what}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_ms(5000), "5s");
        assert_eq!(human_ms(1500), "1500ms");
    }

    /// Checks that the value comes back; the error a panic comes back as.
    async fn value_then_panic() -> String {
        assert_eq!(in_place(|| 7).await, Ok(7));
        in_place(|| -> u8 { panic!("no workspace") })
            .await
            .unwrap_err()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_place_work_returns_its_value_or_its_panic() {
        let err = value_then_panic().await;
        assert!(err.contains("no workspace"), "{err}");
    }

    #[tokio::test]
    async fn in_place_work_runs_on_a_single_thread_runtime_too() {
        let err = value_then_panic().await;
        assert!(err.contains("panic"), "{err}");
    }
}
