//! Outcome events: what became of each verdict (and of bans and re-entries), published back to the
//! pipelines on RabbitMQ as CloudEvents 1.0 (structured mode). Written to the outbox in the
//! transaction that changes the trail ([`crate::audit::outbox`]); published by the [`relay`].
//!
//! ```text
//! finishing transaction ──▶ outbox (PostgreSQL) ──relay, confirms──▶ <queue>.outcomes (topic)
//!                                                                     │ verdict.<status>.<vendor>.<app_id>
//!                                                                     ▼
//!                                                           the publishers' own queues
//! ```

pub(crate) mod relay;

use secrecy::SecretString;

/// The event types (CloudEvents `type`), as the contract names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    VerdictFinished,
    BanLifted,
    ReentryKicked,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::VerdictFinished => "bouncer.verdict.finished",
            EventType::BanLifted => "bouncer.ban.lifted",
            EventType::ReentryKicked => "bouncer.reentry.kicked",
        }
    }
}

/// What the relay needs: where to publish, and as whom.
#[derive(Clone, Debug)]
pub struct Outcomes {
    pub url: SecretString,
    pub connection_name: String,
    /// `outcomes.exchange`, default `<amqp.queue>.outcomes`.
    pub exchange: String,
    /// The CloudEvents `source`: `bouncer/<outcomes.source, default the queue name>`.
    pub source: String,
    /// `outcomes.queue`: one durable quorum queue bound to every event, declared by the relay.
    pub queue: Option<String>,
}

impl Outcomes {
    /// The relay's settings, or `None` when `outcomes.enabled = false`.
    pub fn from_config(config: &crate::config::Config) -> Option<Outcomes> {
        let o = &config.outcomes;
        o.enabled.then(|| Outcomes {
            url: config.amqp.url.clone(),
            connection_name: config.amqp.connection_name.clone(),
            exchange: o.exchange.clone().unwrap_or_else(|| format!("{}.outcomes", config.amqp.queue)),
            source: format!("bouncer/{}", o.source.clone().unwrap_or_else(|| config.amqp.queue.clone())),
            queue: o.queue.clone(),
        })
    }
}
