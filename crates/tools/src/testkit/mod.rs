//! The test kit: one way to bring up a real pipeline (RabbitMQ + PostgreSQL + simulator + worker
//! processes) with names of its own, configure it as a typed value, wait for outcomes and tear it
//! down. The integration tests, `bouncer demo` and `bouncer bench` all build their stacks here.
//!
//! - [`services`]: the broker and server URLs, per-test databases, temp files, teardown.
//! - [`apps`]: random vendor apps as typed config sections.
//! - [`sim`]: a simulator for those apps, and its control API.
//! - [`process`]: the real `bouncer` binary, one-shot or as `bouncer run` workers.
//! - [`stack`]: [`TestEnv`], a whole pipeline for one test.
//! - [`metrics`], [`wire`]: reading Prometheus text; a cuttable proxy and a raw AMQP publisher.

pub mod api;
pub mod apps;
pub mod events;
pub mod metrics;
pub mod process;
pub mod services;
pub mod sim;
pub mod stack;
pub mod wire;

pub use api::*;
pub use apps::*;
pub use events::*;
pub use metrics::*;
pub use process::*;
pub use services::*;
pub use sim::*;
pub use stack::*;
pub use wire::*;
