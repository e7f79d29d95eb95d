//! The command line's one error type, and the exit codes it maps to: 0 success, 1 a run-time
//! failure (a service unreachable, a command that did not finish), 2 bad usage or an invalid
//! configuration. Every command returns [`CliResult`]; `main` prints the message and exits.

use std::process::ExitCode;

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

/// Why a command failed. The text is printed on stderr as it is.
#[derive(Debug, PartialEq, Eq)]
pub enum CliError {
    /// Bad usage or an invalid configuration (exit 2); the text says what to change.
    Usage(String),
    /// The command could not do its work (exit 1).
    Failed(String),
    /// The command failed and has already said why on stdout (exit 1): `check`'s per-service
    /// lines, a verdict's story that ended `failed`.
    Reported,
}

pub type CliResult = Result<(), CliError>;

impl CliError {
    pub fn usage(text: impl Into<String>) -> CliError {
        CliError::Usage(text.into())
    }

    pub fn failed(text: impl Into<String>) -> CliError {
        CliError::Failed(text.into())
    }

    fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Failed(_) | CliError::Reported => EXIT_FAILURE,
        }
    }
}

/// Prints a failed command's message and turns its result into the process exit code.
pub fn exit(result: CliResult) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let CliError::Usage(text) | CliError::Failed(text) = &e {
                eprintln!("{text}");
            }
            ExitCode::from(e.code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_documented_exit_code() {
        assert_eq!(CliError::usage("x").code(), 2);
        assert_eq!(CliError::failed("x").code(), 1);
        assert_eq!(CliError::Reported.code(), 1);
    }
}
