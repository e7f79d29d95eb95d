-- The GIN index on kick_attempts.verdict_ids finds a verdict's vendor calls (its outcome event's
-- `attempts` and last vendor answer, the console's verdict story). With GIN's default fast update,
-- new calls go to a pending list that every search reads in full: up to 4 MB, ~450 pages a lookup.
-- Finishing 2,500 verdicts (two lookups each for their events) took 9 s beside the retention
-- bench's intake. Written straight into the index, a call costs a few more page writes and a
-- lookup a few page reads.
ALTER INDEX kick_attempts_verdicts SET (fastupdate = off);
-- What the pending list holds now goes into the index proper.
SELECT gin_clean_pending_list('kick_attempts_verdicts'::regclass);
