-- 006_candidates.sql
--
-- candidates: relay URLs the finder has heard of (seed file, HTTP relay
-- lists, relay hints in archived events) but not yet validated. A candidate
-- becomes a row of `relays` once a validation connects and gets EOSE (or
-- CLOSED auth-required) for REQ {limit:1}; candidates that keep failing are
-- retried with exponential backoff and, after the configured number of
-- attempts, kept as a tombstone (dropped_at set) so the same dead URL seen
-- again in hints is not validated again until the tombstone is forgotten.
--
-- Written idempotently (IF NOT EXISTS): the engine also applies this file
-- when the finder starts, so the finder works whichever way it is deployed.

CREATE TABLE IF NOT EXISTS candidates (
    url              TEXT     PRIMARY KEY,
    network          TEXT     NOT NULL
                     CHECK (network IN ('clearnet', 'tor', 'i2p', 'loki', 'local')),
    source           TEXT     NOT NULL,
    inserted_at      BIGINT   NOT NULL,
    attempts         INTEGER  NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT   NOT NULL,
    last_error       TEXT     NULL,
    dropped_at       BIGINT   NULL
);

COMMENT ON TABLE candidates IS
    'Relay URLs discovered but not yet validated; dropped_at marks a candidate given up after too many failed validations';
COMMENT ON COLUMN candidates.source IS 'Where the URL was found: seeds, http:<list url>, hint, archive';
COMMENT ON COLUMN candidates.attempts IS 'Failed validations so far';
COMMENT ON COLUMN candidates.next_attempt_at IS 'Unix seconds before which the candidate is not validated again (exponential backoff)';

-- The validator's queue: active candidates by due time.
CREATE INDEX IF NOT EXISTS candidates_due_idx
    ON candidates (next_attempt_at) WHERE dropped_at IS NULL;

-- Forgetting old tombstones.
CREATE INDEX IF NOT EXISTS candidates_dropped_idx
    ON candidates (dropped_at) WHERE dropped_at IS NOT NULL;
