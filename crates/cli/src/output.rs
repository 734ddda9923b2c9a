//! Output for people (aligned tables, states coloured on a terminal) and for scripts (JSON).

use std::io::IsTerminal;

use drover_core::api::Job;
use drover_core::JobState;

/// `println!` for command output that ends the process quietly (exit 0) when stdout is
/// a closed pipe, as in `drover logs JOB | head`, instead of panicking.
macro_rules! outln {
    () => {
        $crate::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Writes one line to stdout; see [`outln`]. A reader that went away is the end of the
/// command, like SIGPIPE for C programs, so this is the one place that exits directly.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Whether stdout is a terminal (colours, progress bars).
pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

/// Whether stderr is a terminal (live status lines).
pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// A state name, coloured when `color` (green ok, red failed, cyan running, yellow queued).
pub fn state(s: JobState, color: bool) -> String {
    if !color {
        return s.to_string();
    }
    let code = match s {
        JobState::Waiting | JobState::Queued => "33",
        JobState::Leased | JobState::Running => "36",
        JobState::Succeeded => "32",
        JobState::Failed | JobState::TimedOut => "31",
        JobState::Canceled => "90",
    };
    format!("\x1b[{code}m{s}\x1b[0m")
}

/// Prints rows as columns padded to the widest cell (ANSI colour codes do not count).
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let visible = |s: &str| strip_ansi(s).chars().count();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(visible(cell));
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            out += cell;
            if i + 1 < cells.len() {
                out += &" ".repeat(widths[i] - visible(cell) + 2);
            }
        }
        outln!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// The live status line of `--wait`: coloured state, progress bar, percent, message,
/// elapsed time (since the job started, or since it was submitted while it waits).
pub fn status_line(job: &Job, now: chrono::DateTime<chrono::Utc>) -> String {
    let since = job.started_at.unwrap_or(job.created_at);
    let end = job.finished_at.unwrap_or(now);
    let pct = job.progress.as_ref().map_or(0.0, |p| p.percent);
    let msg = job.progress.as_ref().map_or("", |p| p.message.as_str());
    let mut line = format!(
        "{} {} {pct:>3.0}% {}",
        state(job.state, true),
        bar(pct),
        elapsed(end - since)
    );
    if !msg.is_empty() {
        line += "  ";
        line += &msg.chars().take(60).collect::<String>();
    }
    line
}

/// Prints any API value as pretty JSON.
pub fn json<T: serde::Serialize>(v: &T) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).expect("API values serialize")
    );
}

/// A moment as RFC 3339, or `-` for none.
pub fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
}

/// `1h02m`, `3m05s`, `4.2s`.
pub fn elapsed(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}.{}s", s, (ms % 1000) / 100)
    }
}

/// A 20-character progress bar.
pub fn bar(percent: f64) -> String {
    let filled = ((percent.clamp(0.0, 100.0) / 5.0).round()) as usize;
    format!("[{}{}]", "#".repeat(filled), "-".repeat(20 - filled))
}

/// A job in `state`, started now, for unit tests.
#[cfg(test)]
pub fn sample_job(state: JobState) -> Job {
    let t0 = chrono::Utc::now();
    serde_json::from_value(serde_json::json!({
        "id": "j1", "name": "n", "queue": "default", "priority": 0, "state": state,
        "cancel_requested": false, "exec": {"kind": "shell", "command": "true"},
        "labels": {}, "timeout_ms": null, "grace_ms": 10000, "max_attempts": 1,
        "backoff": {},
        "env": {}, "secret_names": [], "metadata": null, "idempotency_key": null,
        "attempts_used": 1, "current_attempt": 1, "progress": null, "result": null,
        "exit_code": null, "error": null, "created_at": t0, "run_at": t0,
        "started_at": t0, "finished_at": null, "attempts": []
    }))
    .unwrap_or_else(|e| panic!("the Job JSON of sample_job is out of date: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_do_not_count_towards_width() {
        assert_eq!(strip_ansi(&state(JobState::Failed, true)), "failed");
        assert_eq!(state(JobState::Failed, false), "failed");
    }

    #[test]
    fn elapsed_and_bar() {
        assert_eq!(elapsed(chrono::Duration::milliseconds(4200)), "4.2s");
        assert_eq!(elapsed(chrono::Duration::seconds(185)), "3m05s");
        assert_eq!(elapsed(chrono::Duration::seconds(3720)), "1h02m");
        assert_eq!(bar(50.0), "[##########----------]");
        assert_eq!(bar(250.0), "[####################]");
    }

    #[test]
    fn the_status_line_shows_state_progress_and_elapsed_time() {
        let mut job = sample_job(JobState::Running);
        let t0 = job.started_at.unwrap();
        let line = strip_ansi(&status_line(&job, t0 + chrono::Duration::seconds(65)));
        assert_eq!(line, "running [--------------------]   0% 1m05s");
        job.progress =
            serde_json::from_value(serde_json::json!({"percent": 40.0, "message": "epoch 2/5"}))
                .ok();
        let line = strip_ansi(&status_line(&job, t0 + chrono::Duration::seconds(3)));
        assert_eq!(line, "running [########------------]  40% 3.0s  epoch 2/5");
    }
}
