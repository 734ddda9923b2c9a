//! The Python executor: function jobs, run by a runner the agent hands to the job's
//! interpreter, whose report of an exception becomes the job's error. The call itself
//! runs as a process job does (see `process`); only the program and the result's
//! meaning differ.

use std::path::Path;

use drover_core::api::Lease;
use drover_core::Exec;
use serde_json::{json, Value};

use crate::attempt::AttemptCtx;
use crate::executor::{Executor, NotStarted, Started, StopRx};
use crate::layout::AttemptFiles;
use crate::pipeline::LogPipeline;
use crate::process::{ProcessExecutor, ProcessJob};
use crate::recycle::WorkspacePool;

/// Runs a Python call as a process.
pub struct PythonExecutor<'a>(ProcessExecutor<'a>);

impl<'a> PythonExecutor<'a> {
    pub fn new(ctx: &'a AttemptCtx, files: &'a AttemptFiles) -> Self {
        PythonExecutor(ProcessExecutor::with_command(ctx, files, call_command))
    }
}

impl Executor for PythonExecutor<'_> {
    type Job = ProcessJob;

    fn prepare(files: &AttemptFiles, pool: &WorkspacePool) -> std::io::Result<()> {
        ProcessExecutor::prepare(files, pool)
    }

    async fn start(
        &self,
        logs: &LogPipeline,
        stop: &mut StopRx,
    ) -> Result<Started<ProcessJob>, NotStarted> {
        self.0.start(logs, stop).await
    }

    fn failure(&self, result: Option<&Value>) -> Option<String> {
        error_of(result)
    }
}

/// The interpreter and runner for the lease's call.
fn call_command(lease: &Lease, files: &AttemptFiles) -> Result<(String, Vec<String>), String> {
    let Exec::Python {
        function,
        args,
        kwargs,
        python,
        path,
    } = &lease.exec
    else {
        return Err(format!("{} jobs are not Python calls", lease.exec.kind()));
    };
    command(
        function,
        args,
        kwargs,
        python.as_deref(),
        path,
        &files.meta().join("call.json"),
    )
}

/// The runner, run as `python -c RUNNER CALL_FILE`: imports `module`, looks up the
/// function, calls it with the file's args and kwargs and writes the JSON return value
/// to `DROVER_RESULT`. An exception, or a return value JSON cannot hold, is written
/// there as `{"exception": {...}}` with the traceback also on stderr (the job's log),
/// and the process exits 1. It needs nothing but the standard library.
const RUNNER: &str = r#"
import importlib, json, os, sys, traceback

def _report(kind, module, message, tb):
    sys.stderr.write(tb)
    with open(os.environ["DROVER_RESULT"], "w") as f:
        json.dump({"exception": {"type": kind, "module": module, "message": message, "traceback": tb}}, f)
    sys.exit(1)

with open(sys.argv[1]) as f:
    call = json.load(f)
sys.path[:0] = [os.path.abspath(p) for p in call["path"]]
module, _, name = call["function"].partition(":")
try:
    fn = importlib.import_module(module)
    for part in name.split("."):
        fn = getattr(fn, part)
    value = fn(*call["args"], **call["kwargs"])
except Exception as e:
    # The runner's own frame is left out: the traceback starts at the user's code.
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))
    _report(type(e).__qualname__, type(e).__module__, str(e), tb)
try:
    text = json.dumps(value, allow_nan=False)
except (TypeError, ValueError) as e:
    message = "%s returned %s, which is not JSON: %s" % (call["function"], type(value).__name__, e)
    _report("ResultNotJSON", "drover", message, message + "\n")
with open(os.environ["DROVER_RESULT"], "w") as f:
    f.write(text)
"#;

/// The program and arguments of a Python call, after writing the call to `call_file`.
fn command(
    function: &str,
    args: &[Value],
    kwargs: &std::collections::BTreeMap<String, Value>,
    python: Option<&str>,
    path: &[String],
    call_file: &Path,
) -> Result<(String, Vec<String>), String> {
    let call = json!({"function": function, "args": args, "kwargs": kwargs, "path": path});
    std::fs::write(call_file, call.to_string())
        .map_err(|e| format!("cannot write the call file: {e}"))?;
    Ok((
        python.unwrap_or("python3").to_string(),
        vec![
            "-c".into(),
            RUNNER.into(),
            call_file.to_string_lossy().into_owned(),
        ],
    ))
}

/// `Type: message` for a result that reports an exception (the job's error, in place
/// of "exit code 1").
fn error_of(result: Option<&Value>) -> Option<String> {
    let e = result?.get("exception")?;
    let kind = e.get("type")?.as_str()?;
    let message = e.get("message").and_then(Value::as_str).unwrap_or_default();
    // The whole message is in the result; the error is a line for tables.
    let line: String = message
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(500)
        .collect();
    Some(if line.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {line}")
    })
}
