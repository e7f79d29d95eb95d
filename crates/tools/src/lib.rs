//! The tools around the worker: `bouncer demo`, `bouncer bench` and `bouncer sim` (served by the
//! `bouncer-tools` binary; the `bouncer` binary hands these commands over), and the test kit they
//! share with the integration tests: one way to bring up RabbitMQ + PostgreSQL + simulator +
//! worker with isolated names, build its configuration as a typed value, wait for outcomes and
//! tear it all down.

pub mod bench;
pub mod cli;
pub mod demo;
pub mod sim;
pub mod testkit;
