-- Confirmation tokens the console has spent: a replay's token works once, so a double click or two
-- operators on one confirmation replay once. Only a fingerprint is kept; rows older than the
-- tokens' life are deleted as new ones come.
CREATE TABLE console_tokens (
    fingerprint bytea PRIMARY KEY,
    used_at     timestamptz NOT NULL DEFAULT now()
);
