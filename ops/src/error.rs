//! Operator-facing errors: a stable code, what went wrong, and a one-line fix hint
//! (STYLE.md 3). Every failure the `callgrid` binary reports goes through `OpsError`, so the
//! CLI prints `error E-XXX: what; fix: hint` and exits with a meaningful status.

use std::fmt;

/// Exit status for bad command-line input (the same as clap's usage errors).
pub const EXIT_USAGE: i32 = 2;
/// Exit status for every other failure.
pub const EXIT_FAILURE: i32 = 1;

/// An error with a stable code and a fix hint, carried inside `anyhow::Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsError {
    pub code: &'static str,
    pub message: String,
    pub hint: String,
    pub exit: i32,
}

impl OpsError {
    pub fn new(code: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        OpsError {
            code,
            message: message.into(),
            hint: hint.into(),
            exit: EXIT_FAILURE,
        }
    }

    /// A usage error: bad argument or input the operator typed (exit status 2).
    pub fn usage(code: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Self {
        OpsError {
            exit: EXIT_USAGE,
            ..OpsError::new(code, message, hint)
        }
    }
}

impl fmt::Display for OpsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}; fix: {}", self.code, self.message, self.hint)
    }
}

impl std::error::Error for OpsError {}

/// Builds an `anyhow::Error` carrying an `OpsError`.
pub fn ops_err(
    code: &'static str,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> anyhow::Error {
    anyhow::Error::new(OpsError::new(code, message, hint))
}

/// Builds an `anyhow::Error` carrying a usage `OpsError` (exit status 2).
pub fn usage_err(
    code: &'static str,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> anyhow::Error {
    anyhow::Error::new(OpsError::usage(code, message, hint))
}

/// The line printed for any error, and the exit status to use.
pub fn render(error: &anyhow::Error) -> (String, i32) {
    match error.downcast_ref::<OpsError>() {
        Some(e) => (format!("error {e}"), e.exit),
        None => (
            format!("error E-INTERNAL: {error:#}; fix: check the node logs and retry; report it if it persists"),
            EXIT_FAILURE,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_code_and_hint() {
        let (line, code) = render(&usage_err("E-BAD-ID", "bad id", "fix it"));
        assert_eq!(line, "error E-BAD-ID: bad id; fix: fix it");
        assert_eq!(code, EXIT_USAGE);
        let (line, code) = render(&anyhow::anyhow!("boom"));
        assert!(line.starts_with("error E-INTERNAL: boom; fix: "));
        assert_eq!(code, EXIT_FAILURE);
    }
}
