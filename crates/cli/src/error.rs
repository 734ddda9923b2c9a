//! What can go wrong in the CLI, and the exit code each failure gets.
//!
//! Exit codes: 0 ok · 1 the job failed, or another error · 2 usage (bad flags) ·
//! 3 not found · 4 cannot connect, or the token was refused · 5 conflict (e.g. cancel of a
//! finished job) · 6 the server rejected the input (400/413). `submit --wait` and `wait`
//! exit with the job's own exit code, 124 when it timed out and 130 when it was canceled.

/// A failure with the message to print and its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or config (exit 2).
    #[error("{0}")]
    Usage(String),
    /// No such job, agent or token (exit 3).
    #[error("{0}")]
    NotFound(String),
    /// The server cannot be reached (exit 4).
    #[error("{0}")]
    Connect(String),
    /// No token, or the server refused it: 401/403 (exit 4).
    #[error("{0}")]
    Auth(String),
    /// The request conflicts with the job's state: 409 (exit 5).
    #[error("{0}")]
    Conflict(String),
    /// The server rejected the input: 400/413 (exit 6).
    #[error("{0}")]
    Invalid(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Other(_) => 1,
            CliError::Usage(_) => 2,
            CliError::NotFound(_) => 3,
            CliError::Connect(_) | CliError::Auth(_) => 4,
            CliError::Conflict(_) => 5,
            CliError::Invalid(_) => 6,
        }
    }
}

impl CliError {
    /// A stable name of the kind of failure, for `-o json`.
    pub fn code(&self) -> &'static str {
        match self {
            CliError::Other(_) => "error",
            CliError::Usage(_) => "usage",
            CliError::NotFound(_) => "not_found",
            CliError::Connect(_) => "cannot_connect",
            CliError::Auth(_) => "unauthorized",
            CliError::Conflict(_) => "conflict",
            CliError::Invalid(_) => "invalid",
        }
    }

    /// The failure as one line of JSON: `{"error": {"code", "message", "exit_code"}}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({"error": {"code": self.code(), "message": self.to_string(), "exit_code": self.exit_code()}})
            .to_string()
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Other(e.to_string())
    }
}

/// The CLI's result type.
pub type Result<T> = std::result::Result<T, CliError>;
