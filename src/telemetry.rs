//! Logging: human-readable on a terminal, JSON lines with `--log-format json` (or
//! `BOUNCER_LOG_FORMAT=json`). Verbosity from `BOUNCER_LOG` (an `EnvFilter`), `info` by default.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// The flag's value (`--log-format`, `BOUNCER_LOG_FORMAT`).
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Crates that log credentials at trace level.
const SECRET_LOGGING_TARGETS: [&str; 4] = ["lapin", "amq_protocol", "amq_protocol_types", "amq_protocol_tcp"];

/// Installs the global subscriber; logs go to stderr so stdout stays for command output.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_env("BOUNCER_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    // lapin logs its SASL response (user and password, as bytes) at trace: whatever BOUNCER_LOG
    // asks, the AMQP client logs at most at debug.
    let filter = SECRET_LOGGING_TARGETS
        .iter()
        .filter_map(|t| format!("{t}=debug").parse().ok())
        .fold(filter, EnvFilter::add_directive);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests run several commands in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}
