-- What the ops console (`bouncer web`) may do in the audit database, and nothing more:
-- read the audit trail, and make the writes a replay makes (the same transaction as
-- `bouncer replay`: verdicts and their failed kicks back to pending, a row in replays, a NOTIFY,
-- which needs no grant). `bouncer migrate --grant-console ROLE` runs these statements with ROLE
-- in place of console_role; the role itself (LOGIN, password) is the DBA's to create.
GRANT USAGE ON SCHEMA public TO console_role;
GRANT SELECT ON verdicts, kicks, kick_attempts, rejected_messages, replays, audit_log, workers, quota_owners, bans,
    reentries, kick_confirmations, outbox TO console_role;
GRANT UPDATE (status, finished_at, replays) ON verdicts TO console_role;
GRANT UPDATE (status, next_attempt_at, first_attempt_at, scheduled_retries, updated_at) ON kicks TO console_role;
GRANT INSERT (verdict_id, actor, previous_status, published) ON replays TO console_role;
GRANT USAGE ON SEQUENCE replays_id_seq TO console_role;
-- A replay spends its confirmation's token (and clears spent ones past their life).
GRANT SELECT, INSERT, DELETE ON console_tokens TO console_role;
-- Lifting a ban from the Bans page.
GRANT UPDATE (ended_at, lifted_at, lifted_by, lift_reason, rule_state, updated_at) ON bans TO console_role;
-- A lift is also an outcome event (outcomes.enabled), written with it.
GRANT INSERT ON outbox TO console_role;
GRANT USAGE ON SEQUENCE outbox_id_seq TO console_role;
-- The overview reads the rollups; a replay changes verdicts' statuses, which the rollup triggers
-- count in the same transaction.
GRANT SELECT ON rollups, rollup_deltas TO console_role;
GRANT INSERT ON rollup_deltas TO console_role;
GRANT USAGE ON SEQUENCE rollup_deltas_id_seq TO console_role;
