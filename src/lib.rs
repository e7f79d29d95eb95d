//! Bouncer: consumes content-moderation verdicts from RabbitMQ, kicks the offending users out of
//! ZEGO and Tencent TRTC rooms within each vendor's limits, and keeps an audit trail in
//! PostgreSQL. `main.rs` only calls [`cli::main`]; everything else lives here.
//!
//! Words used throughout: a *verdict* names users of one room of one app; each user of a verdict
//! is a *kick*; one vendor call carries a *chunk* of kicks of one room (≤ 5 ZEGO, ≤ 10 TRTC) and is
//! recorded as an *attempt*; a *quota* is what a vendor limits per second (a ZEGO AppID, a TRTC
//! SecretId and action) and a *quota group* the quotas owned together (a ZEGO AppID; a TRTC
//! SecretId); its *owner* is the one replica that calls for it, through one *lane* per app.
//!
//! A verdict's path, stage by stage: [`verdict`] (the contract) → [`intake`] → [`audit`] (all
//! SQL) → [`wake`] → [`ownership`] (the elector) → [`lane`] → [`batch`] → [`quota`] → [`call`] →
//! [`vendor_api`] → [`retry`], with [`states`] naming every status.
//!
//! The public modules are what the `bouncer` binary, the `bouncer-tools` crate (demo, bench, test
//! kit) and `bouncer-sim` use: [`cli`], [`config`], [`verdict`], [`vendor_api`], [`publisher`],
//! [`intake`] (its topology), [`audit`] (pools, migrations, queries), [`worker`], [`http`],
//! [`batch`], [`shutdown`] and [`telemetry`]. Everything else is `pub(crate)`.

pub mod api;
pub(crate) mod app;
pub mod audit;
pub mod ban;
pub mod ban_index;
pub mod batch;
pub(crate) mod call;
pub mod callback;
pub mod cli;
pub mod config;
pub(crate) mod enforcement;
pub mod http;
pub mod intake;
pub mod keys;
pub(crate) mod lane;
pub(crate) mod lease;
pub(crate) mod maintenance;
pub mod outcomes;
pub(crate) mod ownership;
pub mod priority;
pub mod publisher;
pub(crate) mod quota;
pub(crate) mod retry;
pub(crate) mod rules;
pub mod serve;
pub mod shutdown;
pub(crate) mod states;
pub mod telemetry;
pub(crate) mod text;
pub mod vendor_api;
pub mod vendors;
pub mod verdict;
pub(crate) mod wake;
pub mod web;
pub mod worker;
