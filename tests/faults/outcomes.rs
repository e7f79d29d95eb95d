//! Outcome events through faults: the relaying worker SIGKILLed mid-stream and the relay's broker
//! connection closed by force, and the broker stopped for 30 s. Every event arrives at least once; a
//! duplicate carries its id.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::helpers::{Apps, EnvOptions, TestEnv};
use crate::private_rabbit::PrivateRabbit;
use crate::{SERIAL, assert_all_enforced, close_connections_named, count, publish_many, wait_until_done_at_least};

#[tokio::test(flavor = "multi_thread")]
async fn every_event_arrives_after_a_sigkill_of_the_relay_and_a_forced_close_of_its_connection() {
    let _serial = SERIAL.lock().await;
    let mut env = TestEnv::new(Apps::random(2, 1), EnvOptions::default()).await;
    env.enable_outcomes_queue();
    publish_many(&env, 1500).await;
    let mut first = env.replica("relay-one");
    wait_until_done_at_least(&env, 200).await;
    first.signal("-KILL");
    first.wait_exit(Duration::from_secs(5)).expect("killed");
    let second = env.replica("relay-two");
    let done = count(&env, "SELECT count(*) FROM verdicts WHERE status = 'done'").await;
    wait_until_done_at_least(&env, (done + 200).min(1500)).await;
    // The survivor's relay has taken over by now (or does shortly): cut its connection.
    let relay_connection = format!("{}-relay", env.connection_name);
    let mut closed = 0;
    for _ in 0..300 {
        closed = close_connections_named(&relay_connection);
        if closed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed >= 1, "found the relay's connection");
    assert_all_enforced(&env, 1500).await;
    env.wait_for_count("SELECT count(*) FROM outbox", 0, Duration::from_secs(60)).await;

    let arrivals = read_one_id_per_verdict(&env, 1500).await;
    eprintln!("events: 1500 distinct, {arrivals} arrivals ({} duplicates)", arrivals - 1500);
    assert!(second.child.id() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_arrives_after_the_broker_is_stopped_for_30_s() {
    let _serial = SERIAL.lock().await;
    // A broker of its own: stopping the shared one would break every other test running.
    let rabbit = PrivateRabbit::start();
    let mut env = TestEnv::on_broker(Apps::random(2, 1), EnvOptions::default(), &rabbit.url()).await;
    env.enable_outcomes_queue();
    publish_many(&env, 3000).await;
    let worker = env.worker();
    wait_until_done_at_least(&env, 200).await;
    rabbit.stop();
    // Enforcement goes on from PostgreSQL; what finishes meanwhile waits in the outbox.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let waiting = count(&env, "SELECT count(*) FROM outbox").await;
    assert!(waiting > 0, "events of verdicts finished during the outage waited in the outbox");
    rabbit.start_again();
    env.reconnect().await;
    assert_all_enforced(&env, 3000).await;
    env.wait_for_count("SELECT count(*) FROM outbox", 0, Duration::from_secs(90)).await;
    let log = worker.log_text();
    assert!(
        log.contains("outcome relay cannot reach RabbitMQ; events wait in the outbox"),
        "the relay said what happened"
    );

    let arrivals = read_one_id_per_verdict(&env, 3000).await;
    eprintln!(
        "broker stopped 30 s: {waiting} events waited; 3000 distinct, {arrivals} arrivals ({} duplicates)",
        arrivals - 3000
    );
}

/// Reads every event from the outcomes queue, then whatever else is queued (the duplicates), and
/// checks that each of `n` verdicts' events arrived with one id however often it was sent, the
/// AMQP message id equal to it. Returns the arrivals, duplicates included.
async fn read_one_id_per_verdict(env: &TestEnv, n: usize) -> usize {
    let events = env.read_events(&env.outcomes_queue(), n, Duration::from_secs(60)).await;
    let extra = env.read_events(&env.outcomes_queue(), usize::MAX, Duration::from_secs(2)).await;
    let mut by_subject: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in events.iter().chain(&extra) {
        let id = e.event["id"].as_str().expect("id").to_owned();
        assert_eq!(e.message_id.as_deref(), Some(id.as_str()));
        by_subject.entry(e.event["subject"].as_str().expect("subject").to_owned()).or_default().insert(id);
    }
    assert_eq!(by_subject.len(), n, "every verdict's event arrived");
    assert!(
        by_subject.values().all(|ids| ids.len() == 1),
        "a verdict finished once has one event id, however often sent"
    );
    events.len() + extra.len()
}
