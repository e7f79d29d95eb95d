//! One integration-test binary: every test talks to the real RabbitMQ, PostgreSQL and `bouncer sim`
//! and cleans up after itself, so all of them can run in parallel.

mod attacks;
mod bans;
mod browser;
mod cli;
mod contract;
mod deploy;
use bouncer_tools::testkit as helpers;
mod hostile;
mod layout;
mod ops;
mod outcomes;
mod pipeline;
mod pooler;
mod reentry;
mod retention;
mod rules;
mod secrets;
mod vendors;
mod web;
