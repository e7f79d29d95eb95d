//! Bouncer: consumes content-moderation verdicts from RabbitMQ, kicks the offending users out of
//! ZEGO and Tencent TRTC rooms within each vendor's limits, and keeps an audit trail in
//! PostgreSQL. `main.rs` only calls [`cli::main`]; everything else lives here.

pub mod app;
pub mod audit;
pub mod batch;
pub mod bench;
pub mod call;
pub mod cli;
pub mod config;
pub mod http;
pub mod intake;
pub mod lane;
pub mod lease;
pub mod ownership;
pub mod publisher;
pub mod quota;
pub mod retry;
pub mod shutdown;
pub mod sim;
pub mod states;
pub mod telemetry;
pub mod text;
pub mod vendor;
pub mod verdict;
pub mod wake;
pub mod worker;
