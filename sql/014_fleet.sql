-- =============================================================================
-- 014_fleet.sql: several bigbrotr processes share one archive.
--
-- Every `bigbrotr run` / long-running `bigbrotr sync` is a worker. A worker
-- syncs a relay only while it holds that relay's lease, and runs a side stage
-- (finder, monitor, analytics, dvm) only while it holds that role's lease. A
-- lease is a row with an expiry that its holder pushes forward at every
-- heartbeat, in short single-statement transactions: nothing is held on a
-- connection between statements, so PgBouncer in transaction mode works (no
-- session-level advisory locks). Every expiry is compared with the database's
-- clock, never a worker's.
--
-- A lease that expired may be taken by another worker; taking it draws a new
-- epoch from one sequence, so (key, epoch) names one grant for ever. The cursor
-- of a relay is written only `WHERE` its lease still carries the writer's epoch
-- (stages/sink.rs): a worker that stalled past its lease can no longer move the
-- cursor of a relay another worker synced since.
--
-- fleet_lease_history records every grant, takeover and release (a trigger,
-- so no code path can skip it); the engine prunes it after a week.
-- =============================================================================

CREATE TABLE IF NOT EXISTS fleet_workers (
    worker        TEXT         PRIMARY KEY,
    host          TEXT         NOT NULL,
    pid           INTEGER      NOT NULL,
    -- Which kernel and pid namespace `pid` belongs to (boot id / pid namespace, Linux; empty
    -- elsewhere): a worker sharing them may check whether `pid` is still alive, and drop
    -- the leases of one that is not without waiting for their expiry.
    boot          TEXT         NOT NULL DEFAULT '',
    -- True when the worker syncs the whole registry (its share counts in the
    -- fair share); false for `sync --relay` workers.
    registry      BOOLEAN      NOT NULL,
    started_at    TIMESTAMPTZ  NOT NULL DEFAULT now(),
    heartbeat_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ  NOT NULL
);

COMMENT ON TABLE fleet_workers IS
    'bigbrotr processes sharing this archive; live while expires_at > now()';

CREATE SEQUENCE IF NOT EXISTS fleet_epoch;

CREATE TABLE IF NOT EXISTS fleet_leases (
    kind         TEXT         NOT NULL CHECK (kind IN ('relay', 'role')),
    key          TEXT         NOT NULL,
    worker       TEXT         NOT NULL,
    epoch        BIGINT       NOT NULL,
    acquired_at  TIMESTAMPTZ  NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ  NOT NULL,
    PRIMARY KEY (kind, key)
);

CREATE INDEX IF NOT EXISTS fleet_leases_worker ON fleet_leases (worker);

COMMENT ON TABLE fleet_leases IS
    'Who syncs a relay (kind relay, key = url) or runs a side stage (kind role); held while expires_at > now()';

CREATE TABLE IF NOT EXISTS fleet_lease_history (
    id               BIGSERIAL    PRIMARY KEY,
    at               TIMESTAMPTZ  NOT NULL DEFAULT clock_timestamp(),
    kind             TEXT         NOT NULL,
    key              TEXT         NOT NULL,
    event            TEXT         NOT NULL CHECK (event IN ('acquired', 'taken', 'released')),
    worker           TEXT         NOT NULL,
    epoch            BIGINT       NOT NULL,
    -- For `taken`: the grant it replaced, and when that grant had expired.
    prev_worker      TEXT,
    prev_epoch       BIGINT,
    prev_expires_at  TIMESTAMPTZ
);

CREATE INDEX IF NOT EXISTS fleet_lease_history_at ON fleet_lease_history (at);

COMMENT ON TABLE fleet_lease_history IS
    'Every lease grant (acquired), takeover of an expired lease (taken) and release; pruned after 7 days';

CREATE OR REPLACE FUNCTION fleet_lease_log() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO fleet_lease_history (kind, key, event, worker, epoch)
        VALUES (NEW.kind, NEW.key, 'acquired', NEW.worker, NEW.epoch);
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO fleet_lease_history
            (kind, key, event, worker, epoch, prev_worker, prev_epoch, prev_expires_at)
        VALUES (NEW.kind, NEW.key, 'taken', NEW.worker, NEW.epoch,
                OLD.worker, OLD.epoch, OLD.expires_at);
        RETURN NEW;
    END IF;
    INSERT INTO fleet_lease_history (kind, key, event, worker, epoch, prev_expires_at)
    VALUES (OLD.kind, OLD.key, 'released', OLD.worker, OLD.epoch, OLD.expires_at);
    RETURN OLD;
END
$$;

DROP TRIGGER IF EXISTS fleet_lease_grant ON fleet_leases;
CREATE TRIGGER fleet_lease_grant
    AFTER INSERT OR DELETE ON fleet_leases
    FOR EACH ROW EXECUTE FUNCTION fleet_lease_log();

-- Heartbeats update expires_at only: no history row for them.
DROP TRIGGER IF EXISTS fleet_lease_takeover ON fleet_leases;
CREATE TRIGGER fleet_lease_takeover
    AFTER UPDATE ON fleet_leases
    FOR EACH ROW WHEN (OLD.epoch IS DISTINCT FROM NEW.epoch)
    EXECUTE FUNCTION fleet_lease_log();
