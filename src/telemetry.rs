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

/// Whether an event may be logged whatever `BOUNCER_LOG` asks: lapin logs its SASL response
/// (user and password, as bytes) at trace, so the AMQP client never logs below debug. (A
/// `lapin=debug` directive would cap it too, but also *raise* it above a quieter default.)
///
/// Nor does lapin's warning for each message the broker returns: the outcome relay publishes with
/// `mandatory` and counts unroutable events itself, one line per batch, and lapin's line (one per
/// event, with the whole event in it) would flood the log of a deployment nobody has bound a queue
/// for yet.
fn may_log(meta: &tracing::Metadata<'_>) -> bool {
    let secret_target = SECRET_LOGGING_TARGETS
        .iter()
        .any(|t| meta.target().strip_prefix(t).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")));
    let secret_trace = secret_target && *meta.level() == tracing::Level::TRACE;
    let returned_message = meta.target() == RETURNED_MESSAGES_TARGET && *meta.level() == tracing::Level::WARN;
    !(secret_trace || returned_message)
}

/// Where lapin logs each message the broker returned.
const RETURNED_MESSAGES_TARGET: &str = "lapin::returned_messages";

/// Installs the global subscriber; logs go to stderr so stdout stays for command output.
pub fn init(format: LogFormat, default_level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_env("BOUNCER_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    let cap = tracing_subscriber::filter::filter_fn(may_log);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests run several commands in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.finish().with(cap).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).finish().with(cap).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_amqp_client_never_logs_at_trace_and_others_are_left_to_the_filter() {
        use tracing::Level;
        use tracing::callsite::Identifier;
        use tracing::metadata::{Kind, Metadata};
        struct Site;
        impl tracing::callsite::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!()
            }
        }
        static SITE: Site = Site;
        let meta = |target: &'static str, level: Level| {
            Metadata::new(
                "e",
                target,
                level,
                None,
                None,
                None,
                tracing::field::FieldSet::new(&[], Identifier(&SITE)),
                Kind::EVENT,
            )
        };
        assert!(!may_log(&meta("lapin", Level::TRACE)));
        assert!(!may_log(&meta("lapin::channels", Level::TRACE)));
        assert!(!may_log(&meta("amq_protocol_tcp", Level::TRACE)));
        assert!(may_log(&meta("lapin::channels", Level::DEBUG)));
        assert!(may_log(&meta("lapinx", Level::TRACE)), "only the named crates");
        assert!(may_log(&meta("bouncer::intake", Level::TRACE)));
        assert!(!may_log(&meta("lapin::returned_messages", Level::WARN)), "counted by the relay instead");
        assert!(may_log(&meta("lapin::returned_messages", Level::ERROR)));
    }
}
