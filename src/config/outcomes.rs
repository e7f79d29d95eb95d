//! `[outcomes]`: outcome events back to the pipelines (README, "Outcome events"): on by default,
//! published to a durable topic exchange the worker declares.

use serde::Serialize;

use super::*;

/// `[outcomes]` as written in the file.
#[derive(Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct FileOutcomes {
    /// `false` turns events off: no outbox rows, no relay, no exchange.
    pub enabled: bool,
    /// The topic exchange (default `<amqp.queue>.outcomes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange: Option<String>,
    /// The CloudEvents `source` is `bouncer/<source>` (default: the queue name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A durable quorum queue the worker declares and binds to every event (absent: none; the
    /// pipelines bind their own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

impl Default for FileOutcomes {
    fn default() -> Self {
        FileOutcomes { enabled: true, exchange: None, source: None, queue: None }
    }
}

/// `[outcomes]`, validated.
#[derive(Clone, Debug)]
pub struct OutcomesConfig {
    pub enabled: bool,
    pub exchange: Option<String>,
    pub source: Option<String>,
    pub queue: Option<String>,
}

/// AMQP names are short strings (≤ 255 bytes); `amq.` is the broker's own prefix.
fn check_name(key: &str, name: &Option<String>, p: &mut Vec<Problem>) {
    if let Some(n) = name
        && (n.trim().is_empty() || n.len() > 255 || n.starts_with("amq."))
    {
        p.push(problem(key, "must be 1 to 255 bytes and not start with \"amq.\""));
    }
}

pub(super) fn validate_outcomes(f: FileOutcomes, p: &mut Vec<Problem>) -> OutcomesConfig {
    check_name("outcomes.exchange", &f.exchange, p);
    check_name("outcomes.queue", &f.queue, p);
    if let Some(s) = &f.source
        && (s.is_empty() || s.len() > 200 || s.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        p.push(problem("outcomes.source", "must be 1 to 200 characters without spaces"));
    }
    OutcomesConfig { enabled: f.enabled, exchange: f.exchange, source: f.source, queue: f.queue }
}
