-- 008_summaries.sql
--
-- Summary tables behind the statistics views, maintained incrementally by
-- the engine's analytics stage (engine/analytics.rs), so that the views keep
-- answering in milliseconds on an archive of millions of events.
--
-- How changes are captured, and why this way
-- ------------------------------------------
-- The ingestion hot path (the sink's COPY, or its INSERT ... ON CONFLICT DO
-- NOTHING) must not pay for the summaries: no row-level triggers, and no
-- aggregating statement-level triggers either (folding every batch into a
-- dozen summary rows would roughly double the sink's cost and serialize
-- concurrent writers on the hottest summary rows). Instead every new row of
-- events, events_relays and relay_metadata gets a number from one sequence,
-- analytics_seq, in a column ingest_seq with a btree index (an append to
-- the right edge of the index). The default is a plain nextval(), which
-- keeps COPY's multi-row insert (any other volatile default turns it off).
-- A row absorbed by ON CONFLICT DO NOTHING is never written, so it is not
-- counted again; the number it drew is simply skipped.
--
-- Alternatives considered and rejected:
--   * a watermark on events.created_at: not in insertion order (relays serve
--     old events every day), so it would miss rows;
--   * the transaction id (a column defaulting to pg_current_xact_id(), folded
--     below pg_snapshot_xmin): exact within one cluster, but xids belong to
--     the cluster, so after `bigbrotr backup` + `restore` into another
--     cluster the new rows' xids would fall below the restored watermark and
--     be silently skipped. Sequence values survive pg_dump/pg_restore.
--   * statement-level triggers with transition tables: exact and simple, but
--     the aggregation and the upserts of the summary rows would run inside
--     every sink transaction (see above).
--
-- Sequence numbers are handed out in one order and committed in another:
-- seq 10 may commit after seq 11 has been folded. So the refresher only
-- folds up to a bound it has proven complete:
--   1. it reads the sequence's last value S (statement A), then takes a
--      snapshot X (statement B, later);
--   2. a BEFORE INSERT ... FOR EACH STATEMENT trigger (one call per
--      statement, not per row) assigns the transaction its id before any
--      row of the statement draws a number, so any transaction holding a
--      number <= S had its transaction id before A, hence is finished at X
--      or listed as running in X;
--   3. once pg_snapshot_xmin(now) >= pg_snapshot_xmax(X), every transaction
--      running at X has ended, and every row numbered <= S is final.
-- S is then the new safe bound. In an idle database this holds at once; under
-- ingestion it holds as soon as the sink's in-flight batch commits (the
-- candidate is kept in analytics_state and confirmed by a later refresh).
-- The sequence has CACHE 1: a per-session cache would hand out numbers <= S
-- after A without touching the sequence.
--
-- Each refresh folds the rows numbered in (watermark, hi] in ONE transaction
-- that also moves the watermark to hi: a crash leaves either both or neither,
-- so an interrupted refresh never double-counts nor skips. hi is chosen so a
-- refresh folds at most p_batch rows (bounded transactions).
--
-- The views stay exact between refreshes: each one reads the summaries and
-- merges the rows numbered above the watermark (the "tail", small while the
-- refresher keeps up) from the base tables through the ingest_seq indexes.
-- They answer what the plain views of 005 answer, at any moment.
--
-- Deletions: delete_orphan_events (redefined below) decrements the
-- summaries for the deleted rows already folded, in the same transaction.
-- Rows are never deleted from events_relays and relay_metadata by bigbrotr;
-- after any manual deletion there, run analytics_rebuild()
-- (`bigbrotr analytics rebuild`).
--
-- Serialization: refresh, orphan deletion and rebuild take the transaction
-- advisory lock analytics_lock_key() first, so they never interleave. They
-- must run in READ COMMITTED (each statement then sees what the previous
-- holder of the lock committed); they refuse other isolation levels.
--
-- Rows that predate this migration have ingest_seq NULL and are counted by
-- the initial analytics_rebuild() at the end of this file (on an existing
-- large archive this migration therefore takes a while, once).

-- ---------------------------------------------------------------------------
-- Change capture.
-- ---------------------------------------------------------------------------
CREATE SEQUENCE analytics_seq AS BIGINT CACHE 1;

COMMENT ON SEQUENCE analytics_seq IS
    'Numbers every new row of events, events_relays and relay_metadata for the analytics refresher';

-- ADD COLUMN without a default is instant (no table rewrite); the default set
-- afterwards applies to new rows only.
ALTER TABLE events ADD COLUMN ingest_seq BIGINT;
ALTER TABLE events ALTER COLUMN ingest_seq SET DEFAULT nextval('analytics_seq');
ALTER TABLE events_relays ADD COLUMN ingest_seq BIGINT;
ALTER TABLE events_relays ALTER COLUMN ingest_seq SET DEFAULT nextval('analytics_seq');
ALTER TABLE relay_metadata ADD COLUMN ingest_seq BIGINT;
ALTER TABLE relay_metadata ALTER COLUMN ingest_seq SET DEFAULT nextval('analytics_seq');

-- Step 2 above: the writing transaction has its id before its rows draw numbers.
CREATE OR REPLACE FUNCTION analytics_take_xid()
RETURNS TRIGGER
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_current_xact_id();
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION analytics_take_xid() IS
    'Statement trigger: assigns the transaction id before the statement''s rows draw analytics_seq numbers';

CREATE TRIGGER events_analytics_take_xid
    BEFORE INSERT ON events FOR EACH STATEMENT EXECUTE FUNCTION analytics_take_xid();
CREATE TRIGGER events_relays_analytics_take_xid
    BEFORE INSERT ON events_relays FOR EACH STATEMENT EXECUTE FUNCTION analytics_take_xid();
CREATE TRIGGER relay_metadata_analytics_take_xid
    BEFORE INSERT ON relay_metadata FOR EACH STATEMENT EXECUTE FUNCTION analytics_take_xid();

COMMENT ON COLUMN events.ingest_seq IS
    'Insertion number (analytics_seq) for the analytics refresher; NULL for rows older than the summaries';
COMMENT ON COLUMN events_relays.ingest_seq IS
    'Insertion number (analytics_seq) for the analytics refresher; NULL for rows older than the summaries';
COMMENT ON COLUMN relay_metadata.ingest_seq IS
    'Insertion number (analytics_seq) for the analytics refresher; NULL for rows older than the summaries';

CREATE INDEX events_ingest_seq_idx ON events (ingest_seq) WHERE ingest_seq IS NOT NULL;
CREATE INDEX events_relays_ingest_seq_idx ON events_relays (ingest_seq) WHERE ingest_seq IS NOT NULL;
CREATE INDEX relay_metadata_ingest_seq_idx ON relay_metadata (ingest_seq) WHERE ingest_seq IS NOT NULL;

-- ---------------------------------------------------------------------------
-- Summary tables. Invariant: a keyed summary row exists iff its count > 0.
-- ---------------------------------------------------------------------------

-- The refresher's state (one row).
CREATE TABLE analytics_state (
    singleton         BOOLEAN      PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    -- Rows with ingest_seq <= watermark (or NULL) are folded into the summaries.
    watermark         BIGINT       NOT NULL DEFAULT 0,
    -- Every row numbered <= safe_seq is committed or gone for good.
    safe_seq          BIGINT       NOT NULL DEFAULT 0,
    -- A candidate safe bound and the snapshot that must drain before it holds.
    pending_seq       BIGINT       NULL,
    pending_snapshot  pg_snapshot  NULL,
    -- Folded events: in all, per NIP-01 category, distinct authors and kinds.
    total_events        BIGINT     NOT NULL DEFAULT 0,
    regular_events      BIGINT     NOT NULL DEFAULT 0,
    replaceable_events  BIGINT     NOT NULL DEFAULT 0,
    ephemeral_events    BIGINT     NOT NULL DEFAULT 0,
    addressable_events  BIGINT     NOT NULL DEFAULT 0,
    other_events        BIGINT     NOT NULL DEFAULT 0,
    unique_pubkeys      BIGINT     NOT NULL DEFAULT 0,
    unique_kinds        BIGINT     NOT NULL DEFAULT 0,
    refreshed_at      BIGINT       NULL,
    rebuilt_at        BIGINT       NULL
);
INSERT INTO analytics_state DEFAULT VALUES;

COMMENT ON TABLE analytics_state IS
    'Analytics refresher state: watermark (rows folded), proven-safe bound, pending candidate, global counters';

CREATE TABLE analytics_kinds (
    kind            INTEGER  PRIMARY KEY,
    event_count     BIGINT   NOT NULL,
    unique_pubkeys  BIGINT   NOT NULL
);
CREATE INDEX analytics_kinds_event_count_idx ON analytics_kinds (event_count DESC, kind);

COMMENT ON TABLE analytics_kinds IS 'Folded events and distinct authors per kind (backs kind_counts_total)';

CREATE TABLE analytics_pubkeys (
    pubkey_hex    TEXT    PRIMARY KEY,
    event_count   BIGINT  NOT NULL,
    unique_kinds  BIGINT  NOT NULL
);
CREATE INDEX analytics_pubkeys_event_count_idx ON analytics_pubkeys (event_count DESC, pubkey_hex);

COMMENT ON TABLE analytics_pubkeys IS 'Folded events and distinct kinds per author (backs pubkey_counts_total)';

-- Needed to keep the distinct counts exact under insertion and deletion.
CREATE TABLE analytics_kind_pubkeys (
    pubkey       BYTEA    NOT NULL,
    kind         INTEGER  NOT NULL,
    event_count  BIGINT   NOT NULL,
    PRIMARY KEY (pubkey, kind)
);

COMMENT ON TABLE analytics_kind_pubkeys IS 'Folded events per (author, kind): the basis of the distinct counts';

-- Folded events per minute of created_at (minute_start = created_at rounded
-- down to a multiple of 60), for the sliding windows of events_statistics.
-- Only events created within analytics_bucket_horizon() of the fold are
-- bucketed, and older buckets are pruned: the windows (at most 7 days back)
-- never read them, so a backfill of old events costs no bucket upserts and
-- both tables stay small.
CREATE TABLE analytics_minutes (
    minute_start  BIGINT  PRIMARY KEY,
    event_count   BIGINT  NOT NULL
);

COMMENT ON TABLE analytics_minutes IS 'Folded events per minute of created_at (events_statistics windows)';

-- The same per hour: a 7-day window then sums at most 168 hours and 59
-- minutes instead of 10,080 minutes.
CREATE TABLE analytics_hours (
    hour_start   BIGINT  PRIMARY KEY,
    event_count  BIGINT  NOT NULL
);

COMMENT ON TABLE analytics_hours IS 'Folded events per hour of created_at (events_statistics windows)';

CREATE TABLE analytics_relays (
    relay_url      TEXT    PRIMARY KEY,
    event_count    BIGINT  NOT NULL,
    first_seen_at  BIGINT  NOT NULL,
    last_seen_at   BIGINT  NOT NULL
);

COMMENT ON TABLE analytics_relays IS 'Folded sightings per relay (backs relays_statistics)';

-- Per checked relay: its newest folded snapshot with both documents'
-- parsed columns (the columns of relay_metadata_latest), and the average
-- RTTs over its last 10 folded check results (relays_statistics).
CREATE TABLE analytics_relay_checks (
    relay_url         TEXT       PRIMARY KEY,
    generated_at      BIGINT     NOT NULL,
    nip11_id          BYTEA      NULL,
    nip66_id          BYTEA      NULL,
    name              TEXT       NULL,
    description       TEXT       NULL,
    banner            TEXT       NULL,
    icon              TEXT       NULL,
    pubkey            TEXT       NULL,
    contact           TEXT       NULL,
    supported_nips    INTEGER[]  NULL,
    software          TEXT       NULL,
    version           TEXT       NULL,
    privacy_policy    TEXT       NULL,
    terms_of_service  TEXT       NULL,
    limitation        JSONB      NULL,
    extra_fields      JSONB      NULL,
    nip11_raw         JSONB      NULL,
    rtt_open          INTEGER    NULL,
    rtt_read          INTEGER    NULL,
    rtt_write         INTEGER    NULL,
    openable          BOOLEAN    NULL,
    readable          BOOLEAN    NULL,
    writable          BOOLEAN    NULL,
    dns               JSONB      NULL,
    tls               JSONB      NULL,
    http              JSONB      NULL,
    geo               JSONB      NULL,
    nip66_raw         JSONB      NULL,
    avg_rtt_open      NUMERIC    NULL,
    avg_rtt_read      NUMERIC    NULL,
    avg_rtt_write     NUMERIC    NULL
);

COMMENT ON TABLE analytics_relay_checks IS
    'Newest folded snapshot of each checked relay and its average RTTs over the last 10 checks '
    '(backs relay_metadata_latest and relays_statistics)';

CREATE TABLE analytics_kind_relays (
    kind         INTEGER  NOT NULL,
    relay_url    TEXT     NOT NULL,
    event_count  BIGINT   NOT NULL,
    PRIMARY KEY (kind, relay_url)
);
CREATE INDEX analytics_kind_relays_relay_idx ON analytics_kind_relays (relay_url, event_count DESC);
CREATE INDEX analytics_kind_relays_event_count_idx ON analytics_kind_relays (event_count DESC);

COMMENT ON TABLE analytics_kind_relays IS 'Folded (event, relay) pairs per (kind, relay) (backs kind_counts_by_relay)';

CREATE TABLE analytics_pubkey_relays (
    pubkey_hex   TEXT    NOT NULL,
    relay_url    TEXT    NOT NULL,
    event_count  BIGINT  NOT NULL,
    PRIMARY KEY (pubkey_hex, relay_url)
);
CREATE INDEX analytics_pubkey_relays_relay_idx ON analytics_pubkey_relays (relay_url, event_count DESC);
CREATE INDEX analytics_pubkey_relays_event_count_idx ON analytics_pubkey_relays (event_count DESC);

COMMENT ON TABLE analytics_pubkey_relays IS
    'Folded (event, relay) pairs per (author, relay) (backs pubkey_counts_by_relay)';

-- ---------------------------------------------------------------------------
-- Helpers.
-- ---------------------------------------------------------------------------

-- The advisory lock serializing refresh, orphan deletion and rebuild ("bbanalyt").
CREATE OR REPLACE FUNCTION analytics_lock_key()
RETURNS BIGINT
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 7089335890143377780::BIGINT $$;

-- The watermark, as a STABLE function: the planner evaluates it while
-- estimating `ingest_seq > analytics_watermark()`, so it sizes the tail from
-- the index statistics instead of guessing a third of the table, and picks
-- hashed subplans for it. At run time it reads the query's snapshot.
-- PARALLEL RESTRICTED keeps the tail scans in the leader: the tail is small,
-- and starting parallel workers for it (which stale statistics invite)
-- costs more than the scan.
CREATE OR REPLACE FUNCTION analytics_watermark()
RETURNS BIGINT
LANGUAGE sql STABLE PARALLEL RESTRICTED
AS $$ SELECT watermark FROM analytics_state $$;

-- Start of the minute holding ts (rounds down, negative ts included).
CREATE OR REPLACE FUNCTION analytics_minute(ts BIGINT)
RETURNS BIGINT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT ts - (((ts % 60) + 60) % 60) $$;

-- Start of the first minute at or after ts.
CREATE OR REPLACE FUNCTION analytics_minute_ceil(ts BIGINT)
RETURNS BIGINT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT ts + ((60 - (((ts % 60) + 60) % 60)) % 60) $$;

-- How far back (seconds) created_at is bucketed per minute and hour: 8 days,
-- more than the longest window (7 days) plus the hour of a partial bucket.
CREATE OR REPLACE FUNCTION analytics_bucket_horizon()
RETURNS BIGINT
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 691200::BIGINT $$;

-- Start of the hour holding ts, and of the first hour at or after ts.
CREATE OR REPLACE FUNCTION analytics_hour(ts BIGINT)
RETURNS BIGINT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT ts - (((ts % 3600) + 3600) % 3600) $$;

CREATE OR REPLACE FUNCTION analytics_hour_ceil(ts BIGINT)
RETURNS BIGINT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT ts + ((3600 - (((ts % 3600) + 3600) % 3600)) % 3600) $$;

COMMENT ON FUNCTION analytics_watermark() IS 'Rows with ingest_seq above this are not folded into the summaries yet';

-- The analytics_relay_checks rows of the relays p_urls, from their snapshots
-- numbered <= p_hi (or older than the summaries); as in 005's
-- relay_metadata_latest and relays_statistics.
CREATE OR REPLACE FUNCTION analytics_relay_checks_of(p_urls TEXT[], p_hi BIGINT)
RETURNS SETOF analytics_relay_checks
LANGUAGE sql STABLE
AS $$
    SELECT u.url, rm.generated_at, rm.nip11_id, rm.nip66_id,
           n11.name, n11.description, n11.banner, n11.icon, n11.pubkey, n11.contact,
           n11.supported_nips, n11.software, n11.version, n11.privacy_policy,
           n11.terms_of_service, n11.limitation, n11.extra_fields, n11.raw,
           n66.rtt_open, n66.rtt_read, n66.rtt_write, n66.openable, n66.readable, n66.writable,
           n66.dns, n66.tls, n66.http, n66.geo, n66.raw,
           rtt.avg_rtt_open, rtt.avg_rtt_read, rtt.avg_rtt_write
    FROM unnest(p_urls) AS u (url)
    CROSS JOIN LATERAL (
        SELECT m.generated_at, m.nip11_id, m.nip66_id
        FROM relay_metadata AS m
        WHERE m.relay_url = u.url AND (m.ingest_seq IS NULL OR m.ingest_seq <= p_hi)
        ORDER BY m.generated_at DESC
        LIMIT 1
    ) AS rm
    LEFT JOIN nip11 AS n11 ON n11.id = rm.nip11_id
    LEFT JOIN nip66 AS n66 ON n66.id = rm.nip66_id
    CROSS JOIN LATERAL (
        SELECT round(avg(n.rtt_open), 2)  AS avg_rtt_open,
               round(avg(n.rtt_read), 2)  AS avg_rtt_read,
               round(avg(n.rtt_write), 2) AS avg_rtt_write
        FROM (
            SELECT m.nip66_id
            FROM relay_metadata AS m
            WHERE m.relay_url = u.url AND m.nip66_id IS NOT NULL
              AND (m.ingest_seq IS NULL OR m.ingest_seq <= p_hi)
            ORDER BY m.generated_at DESC
            LIMIT 10
        ) AS recent
        JOIN nip66 AS n ON n.id = recent.nip66_id
    ) AS rtt
$$;

COMMENT ON FUNCTION analytics_relay_checks_of(TEXT[], BIGINT) IS
    'Internal: analytics_relay_checks rows of some relays from their snapshots numbered <= p_hi';

-- Relays with snapshots not folded yet.
CREATE VIEW analytics_pending_check_relays AS
SELECT DISTINCT m.relay_url
FROM relay_metadata AS m
WHERE m.ingest_seq > analytics_watermark();

COMMENT ON VIEW analytics_pending_check_relays IS 'Relays with monitoring snapshots not folded yet';

-- ---------------------------------------------------------------------------
-- The tail: rows not folded yet, as views (inlined into the statistics views).
-- ---------------------------------------------------------------------------
CREATE VIEW analytics_pending_events AS
SELECT e.id, e.pubkey, e.kind, e.created_at
FROM events AS e
WHERE e.ingest_seq > analytics_watermark();

COMMENT ON VIEW analytics_pending_events IS 'Events not folded into the summaries yet';

-- (event, relay) pairs not folded yet: a new sighting of any event, or a new
-- event with a sighting folded before it (a sighting may precede its event).
CREATE VIEW analytics_pending_pairs AS
SELECT e.kind, e.pubkey, s.relay_url
FROM events_relays AS s
JOIN events AS e ON e.id = s.event_id
WHERE s.ingest_seq > analytics_watermark()
UNION ALL
SELECT e.kind, e.pubkey, s.relay_url
FROM events AS e
JOIN events_relays AS s ON s.event_id = e.id
WHERE e.ingest_seq > analytics_watermark()
  AND (s.ingest_seq IS NULL OR s.ingest_seq <= analytics_watermark());

COMMENT ON VIEW analytics_pending_pairs IS '(kind, author, relay) of the (event, relay) pairs not folded yet';

-- ---------------------------------------------------------------------------
-- analytics_apply_events(pubkeys, kinds, created_ats, sign): adds (sign = 1)
-- or removes (sign = -1) a set of events to/from the event summaries
-- (kinds, authors, (author, kind), minutes, distinct authors). Internal: the
-- caller holds analytics_lock_key().
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION analytics_apply_events(
    p_pubkey      BYTEA[],
    p_kind        INTEGER[],
    p_created_at  BIGINT[],
    p_sign        INTEGER
)
RETURNS VOID
LANGUAGE plpgsql
AS $$
DECLARE
    v_tp     BYTEA[];    -- (author, kind) pairs that appeared or disappeared
    v_tk     INTEGER[];
    v_td     INTEGER[];  -- +1 appeared, -1 disappeared
    v_gone   TEXT[];
    v_kgone  INTEGER[];
    v_mgone  BIGINT[];
    v_hgone  BIGINT[];
    v_pub    BIGINT;
    v_kinds  BIGINT;
    v_bad    BOOLEAN;
BEGIN
    IF p_sign NOT IN (1, -1) THEN
        RAISE EXCEPTION 'analytics_apply_events: sign must be 1 or -1, got %', p_sign;
    END IF;
    IF coalesce(cardinality(p_pubkey), 0) = 0 THEN
        RETURN;
    END IF;

    -- (author, kind): a pair appears when its count leaves 0, disappears when
    -- it returns to 0; those transitions drive the two distinct counts.
    WITH d AS (
        SELECT u.pubkey, u.kind, count(*) * p_sign AS n
        FROM unnest(p_pubkey, p_kind) AS u (pubkey, kind)
        GROUP BY u.pubkey, u.kind
    ), up AS (
        INSERT INTO analytics_kind_pubkeys AS t (pubkey, kind, event_count)
        SELECT d.pubkey, d.kind, d.n FROM d
        ON CONFLICT (pubkey, kind) DO UPDATE SET event_count = t.event_count + EXCLUDED.event_count
        RETURNING t.pubkey, t.kind, t.event_count
    )
    SELECT array_agg(up.pubkey), array_agg(up.kind),
           array_agg(CASE WHEN up.event_count = 0 THEN -1 ELSE 1 END),
           coalesce(bool_or(up.event_count < 0), FALSE)
    INTO v_tp, v_tk, v_td, v_bad
    FROM up
    JOIN d ON d.pubkey = up.pubkey AND d.kind = up.kind
    WHERE up.event_count <= 0 OR (d.n > 0 AND up.event_count = d.n);
    IF v_bad THEN
        RAISE EXCEPTION 'analytics summaries are out of step with events (a folded event was removed twice)'
            USING HINT = 'run `bigbrotr analytics rebuild` (SELECT analytics_rebuild())';
    END IF;
    DELETE FROM analytics_kind_pubkeys AS t
    USING unnest(v_tp, v_tk, v_td) AS x (pubkey, kind, d)
    WHERE x.d = -1 AND t.pubkey = x.pubkey AND t.kind = x.kind;

    -- Authors.
    WITH d AS (
        SELECT u.pubkey, count(*) * p_sign AS n
        FROM unnest(p_pubkey) AS u (pubkey)
        GROUP BY u.pubkey
    ), nk AS (
        SELECT x.pubkey, sum(x.d)::BIGINT AS nk
        FROM unnest(v_tp, v_td) AS x (pubkey, d)
        GROUP BY x.pubkey
    ), up AS (
        INSERT INTO analytics_pubkeys AS t (pubkey_hex, event_count, unique_kinds)
        SELECT encode(d.pubkey, 'hex'), d.n, coalesce(nk.nk, 0)
        FROM d LEFT JOIN nk ON nk.pubkey = d.pubkey
        ON CONFLICT (pubkey_hex) DO UPDATE
            SET event_count = t.event_count + EXCLUDED.event_count,
                unique_kinds = t.unique_kinds + EXCLUDED.unique_kinds
        RETURNING t.pubkey_hex, t.event_count, t.unique_kinds
    )
    SELECT array_agg(up.pubkey_hex) FILTER (WHERE up.event_count = 0),
           count(*) FILTER (WHERE d.n > 0 AND up.event_count = d.n)
             - count(*) FILTER (WHERE up.event_count = 0),
           coalesce(bool_or(up.event_count < 0 OR up.unique_kinds < 0
                            OR (up.event_count = 0) <> (up.unique_kinds = 0)), FALSE)
    INTO v_gone, v_pub, v_bad
    FROM up
    JOIN d ON encode(d.pubkey, 'hex') = up.pubkey_hex;
    IF v_bad THEN
        RAISE EXCEPTION 'analytics summaries are out of step with events (author counts)'
            USING HINT = 'run `bigbrotr analytics rebuild` (SELECT analytics_rebuild())';
    END IF;
    IF v_gone IS NOT NULL THEN
        DELETE FROM analytics_pubkeys WHERE pubkey_hex = ANY (v_gone);
    END IF;

    -- Kinds.
    WITH d AS (
        SELECT u.kind, count(*) * p_sign AS n
        FROM unnest(p_kind) AS u (kind)
        GROUP BY u.kind
    ), np AS (
        SELECT x.kind, sum(x.d)::BIGINT AS np
        FROM unnest(v_tk, v_td) AS x (kind, d)
        GROUP BY x.kind
    ), up AS (
        INSERT INTO analytics_kinds AS t (kind, event_count, unique_pubkeys)
        SELECT d.kind, d.n, coalesce(np.np, 0)
        FROM d LEFT JOIN np ON np.kind = d.kind
        ON CONFLICT (kind) DO UPDATE
            SET event_count = t.event_count + EXCLUDED.event_count,
                unique_pubkeys = t.unique_pubkeys + EXCLUDED.unique_pubkeys
        RETURNING t.kind, t.event_count, t.unique_pubkeys
    )
    SELECT array_agg(up.kind) FILTER (WHERE up.event_count = 0),
           count(*) FILTER (WHERE d.n > 0 AND up.event_count = d.n)
             - count(*) FILTER (WHERE up.event_count = 0),
           coalesce(bool_or(up.event_count < 0 OR up.unique_pubkeys < 0
                            OR (up.event_count = 0) <> (up.unique_pubkeys = 0)), FALSE)
    INTO v_kgone, v_kinds, v_bad
    FROM up
    JOIN d ON d.kind = up.kind;
    IF v_bad THEN
        RAISE EXCEPTION 'analytics summaries are out of step with events (kind counts)'
            USING HINT = 'run `bigbrotr analytics rebuild` (SELECT analytics_rebuild())';
    END IF;
    IF v_kgone IS NOT NULL THEN
        DELETE FROM analytics_kinds WHERE kind = ANY (v_kgone);
    END IF;

    -- Minutes of created_at.
    WITH up AS (
        INSERT INTO analytics_minutes AS t (minute_start, event_count)
        SELECT analytics_minute(u.ts), count(*) * p_sign
        FROM unnest(p_created_at) AS u (ts)
        WHERE u.ts >= now_epoch() - analytics_bucket_horizon()
        GROUP BY 1
        ON CONFLICT (minute_start) DO UPDATE SET event_count = t.event_count + EXCLUDED.event_count
        RETURNING t.minute_start, t.event_count
    )
    SELECT array_agg(up.minute_start) FILTER (WHERE up.event_count = 0),
           coalesce(bool_or(up.event_count < 0), FALSE)
    INTO v_mgone, v_bad
    FROM up;
    IF v_bad THEN
        RAISE EXCEPTION 'analytics summaries are out of step with events (minute counts)'
            USING HINT = 'run `bigbrotr analytics rebuild` (SELECT analytics_rebuild())';
    END IF;
    IF v_mgone IS NOT NULL THEN
        DELETE FROM analytics_minutes WHERE minute_start = ANY (v_mgone);
    END IF;

    -- Hours of created_at.
    WITH up AS (
        INSERT INTO analytics_hours AS t (hour_start, event_count)
        SELECT analytics_hour(u.ts), count(*) * p_sign
        FROM unnest(p_created_at) AS u (ts)
        WHERE u.ts >= now_epoch() - analytics_bucket_horizon()
        GROUP BY 1
        ON CONFLICT (hour_start) DO UPDATE SET event_count = t.event_count + EXCLUDED.event_count
        RETURNING t.hour_start, t.event_count
    )
    SELECT array_agg(up.hour_start) FILTER (WHERE up.event_count = 0),
           coalesce(bool_or(up.event_count < 0), FALSE)
    INTO v_hgone, v_bad
    FROM up;
    IF v_bad THEN
        RAISE EXCEPTION 'analytics summaries are out of step with events (hour counts)'
            USING HINT = 'run `bigbrotr analytics rebuild` (SELECT analytics_rebuild())';
    END IF;
    IF v_hgone IS NOT NULL THEN
        DELETE FROM analytics_hours WHERE hour_start = ANY (v_hgone);
    END IF;

    -- Global counters (one event_category call per distinct kind).
    WITH d AS (
        SELECT event_category(u.kind) AS category, count(*) * p_sign AS n
        FROM unnest(p_kind) AS u (kind)
        GROUP BY u.kind
    )
    UPDATE analytics_state
    SET total_events = total_events + (SELECT coalesce(sum(d.n), 0) FROM d),
        regular_events = regular_events
            + (SELECT coalesce(sum(d.n), 0) FROM d WHERE d.category = 'regular'),
        replaceable_events = replaceable_events
            + (SELECT coalesce(sum(d.n), 0) FROM d WHERE d.category = 'replaceable'),
        ephemeral_events = ephemeral_events
            + (SELECT coalesce(sum(d.n), 0) FROM d WHERE d.category = 'ephemeral'),
        addressable_events = addressable_events
            + (SELECT coalesce(sum(d.n), 0) FROM d WHERE d.category = 'addressable'),
        other_events = other_events
            + (SELECT coalesce(sum(d.n), 0) FROM d WHERE d.category = 'other'),
        unique_pubkeys = unique_pubkeys + v_pub,
        unique_kinds = unique_kinds + v_kinds;
END
$$;

COMMENT ON FUNCTION analytics_apply_events(BYTEA[], INTEGER[], BIGINT[], INTEGER) IS
    'Internal: adds (sign 1) or removes (sign -1) events to/from the event summaries';

-- ---------------------------------------------------------------------------
-- analytics_refresh(p_batch) -> (events_folded, sightings_folded,
--                                snapshots_folded, caught_up, waiting)
--   Folds at most p_batch new rows (events + sightings + snapshots) into the
--   summaries and moves the watermark past them, in the caller's transaction
--   (call it in autocommit: a transaction that has already written delays
--   its own safe bound). caught_up: nothing proven safe is left to fold.
--   waiting: rows exist whose safety is not proven yet (an ingestion
--   transaction was in flight); a later call folds them. Call it until
--   caught_up; until also NOT waiting to fold everything committed so far.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION analytics_refresh(
    p_batch               INTEGER DEFAULT 50000,
    OUT events_folded     BIGINT,
    OUT sightings_folded  BIGINT,
    OUT snapshots_folded  BIGINT,
    OUT caught_up         BOOLEAN,
    OUT waiting           BOOLEAN
)
LANGUAGE plpgsql
AS $$
DECLARE
    v_state     analytics_state%ROWTYPE;
    v_wm        BIGINT;
    v_safe      BIGINT;
    v_hi        BIGINT;
    v_rows      BIGINT;
    v_seq       BIGINT;
    v_snap      pg_snapshot;
    v_now_snap  pg_snapshot;
    v_pk        BYTEA[];
    v_kind      INTEGER[];
    v_ts        BIGINT[];
    v_urls      TEXT[];
BEGIN
    events_folded := 0;
    sightings_folded := 0;
    snapshots_folded := 0;
    IF p_batch IS NULL OR p_batch < 1 THEN
        RAISE EXCEPTION 'analytics_refresh: batch must be at least 1, got %', p_batch;
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'analytics_refresh must run in READ COMMITTED (it is %)',
            current_setting('transaction_isolation');
    END IF;
    -- Nothing below assigns a transaction id before the writes, so this
    -- transaction never delays its own safe bound.
    PERFORM pg_advisory_xact_lock(analytics_lock_key());
    SELECT * INTO v_state FROM analytics_state;
    v_wm := v_state.watermark;
    v_safe := v_state.safe_seq;
    v_seq := v_state.pending_seq;
    v_snap := v_state.pending_snapshot;

    FOR attempt IN 1..2 LOOP
        IF v_snap IS NULL THEN
            -- Statement A: the last number handed out ...
            SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END
            INTO v_seq FROM analytics_seq AS s;
            IF v_seq <= v_safe THEN
                v_seq := NULL;
                EXIT;
            END IF;
            -- ... statement B: a snapshot taken after it.
            SELECT pg_current_snapshot() INTO v_snap;
        END IF;
        SELECT pg_current_snapshot() INTO v_now_snap;
        -- Everything running at v_snap has ended; or v_snap comes from
        -- another cluster (a restored dump, where every row is committed).
        IF pg_snapshot_xmin(v_now_snap) >= pg_snapshot_xmax(v_snap)
           OR pg_snapshot_xmax(v_snap) > pg_snapshot_xmax(v_now_snap) THEN
            v_safe := greatest(v_safe, v_seq);
            v_seq := NULL;
            v_snap := NULL;
        ELSE
            EXIT;
        END IF;
    END LOOP;

    -- The batch: the p_batch lowest numbers above the watermark, all tables.
    IF v_wm < v_safe THEN
        SELECT max(b.ingest_seq), count(*) INTO v_hi, v_rows
        FROM (
            SELECT u.ingest_seq
            FROM (
                (SELECT e.ingest_seq FROM events AS e
                 WHERE e.ingest_seq > v_wm AND e.ingest_seq <= v_safe
                 ORDER BY e.ingest_seq LIMIT p_batch)
                UNION ALL
                (SELECT s.ingest_seq FROM events_relays AS s
                 WHERE s.ingest_seq > v_wm AND s.ingest_seq <= v_safe
                 ORDER BY s.ingest_seq LIMIT p_batch)
                UNION ALL
                (SELECT m.ingest_seq FROM relay_metadata AS m
                 WHERE m.ingest_seq > v_wm AND m.ingest_seq <= v_safe
                 ORDER BY m.ingest_seq LIMIT p_batch)
            ) AS u
            ORDER BY u.ingest_seq
            LIMIT p_batch
        ) AS b;
        IF v_rows < p_batch THEN
            v_hi := v_safe;
        END IF;

        -- Events.
        SELECT array_agg(e.pubkey), array_agg(e.kind), array_agg(e.created_at), count(*)
        INTO v_pk, v_kind, v_ts, events_folded
        FROM events AS e
        WHERE e.ingest_seq > v_wm AND e.ingest_seq <= v_hi;
        PERFORM analytics_apply_events(v_pk, v_kind, v_ts, 1);

        -- Sightings per relay.
        WITH d AS (
            SELECT s.relay_url, count(*) AS n, min(s.seen_at) AS first_seen_at,
                   max(s.seen_at) AS last_seen_at
            FROM events_relays AS s
            WHERE s.ingest_seq > v_wm AND s.ingest_seq <= v_hi
            GROUP BY s.relay_url
        ), up AS (
            INSERT INTO analytics_relays AS t (relay_url, event_count, first_seen_at, last_seen_at)
            SELECT d.relay_url, d.n, d.first_seen_at, d.last_seen_at FROM d
            ON CONFLICT (relay_url) DO UPDATE
                SET event_count = t.event_count + EXCLUDED.event_count,
                    first_seen_at = least(t.first_seen_at, EXCLUDED.first_seen_at),
                    last_seen_at = greatest(t.last_seen_at, EXCLUDED.last_seen_at)
        )
        SELECT coalesce(sum(d.n), 0)::BIGINT INTO sightings_folded FROM d;

        -- (event, relay) pairs that become complete: a folded sighting of an
        -- event folded now or before, or an event folded now whose sighting
        -- was folded before it.
        WITH p AS MATERIALIZED (
            SELECT e.kind, e.pubkey, s.relay_url
            FROM events_relays AS s
            JOIN events AS e ON e.id = s.event_id
            WHERE s.ingest_seq > v_wm AND s.ingest_seq <= v_hi
              AND (e.ingest_seq IS NULL OR e.ingest_seq <= v_hi)
            UNION ALL
            SELECT e.kind, e.pubkey, s.relay_url
            FROM events AS e
            JOIN events_relays AS s ON s.event_id = e.id
            WHERE e.ingest_seq > v_wm AND e.ingest_seq <= v_hi
              AND (s.ingest_seq IS NULL OR s.ingest_seq <= v_wm)
        ), kr AS (
            INSERT INTO analytics_kind_relays AS t (kind, relay_url, event_count)
            SELECT p.kind, p.relay_url, count(*) FROM p GROUP BY p.kind, p.relay_url
            ON CONFLICT (kind, relay_url) DO UPDATE SET event_count = t.event_count + EXCLUDED.event_count
        )
        INSERT INTO analytics_pubkey_relays AS t (pubkey_hex, relay_url, event_count)
        SELECT encode(p.pubkey, 'hex'), p.relay_url, count(*) FROM p GROUP BY p.pubkey, p.relay_url
        ON CONFLICT (pubkey_hex, relay_url) DO UPDATE SET event_count = t.event_count + EXCLUDED.event_count;

        -- The relays with new snapshots: newest snapshot and RTT averages
        -- recomputed over their folded snapshots.
        SELECT array_agg(DISTINCT m.relay_url), count(*) INTO v_urls, snapshots_folded
        FROM relay_metadata AS m
        WHERE m.ingest_seq > v_wm AND m.ingest_seq <= v_hi;
        IF v_urls IS NOT NULL THEN
            DELETE FROM analytics_relay_checks WHERE relay_url = ANY (v_urls);
            INSERT INTO analytics_relay_checks SELECT * FROM analytics_relay_checks_of(v_urls, v_hi);
        END IF;

        v_wm := v_hi;
    END IF;

    -- Buckets past the horizon (an hour of slack, so the bucket of an event
    -- still inside the horizon is never pruned before a decrement finds it).
    DELETE FROM analytics_minutes
    WHERE minute_start < now_epoch() - analytics_bucket_horizon() - 3600;
    DELETE FROM analytics_hours
    WHERE hour_start < now_epoch() - analytics_bucket_horizon() - 3600;

    UPDATE analytics_state
    SET watermark = v_wm,
        safe_seq = v_safe,
        pending_seq = v_seq,
        pending_snapshot = v_snap,
        refreshed_at = now_epoch();
    caught_up := v_wm >= v_safe;
    waiting := v_seq IS NOT NULL;
END
$$;

COMMENT ON FUNCTION analytics_refresh(INTEGER) IS
    'Folds at most p_batch new rows into the analytics summaries (one transaction); repeat until caught_up';

-- ---------------------------------------------------------------------------
-- analytics_rebuild() -> BIGINT (events counted)
--   Recomputes every summary from the base tables. Blocks ingestion while it
--   runs (SHARE locks on events, events_relays, relay_metadata), so the
--   result is exact without any safe-bound bookkeeping. For repairs after
--   manual deletions, and the initial build below.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION analytics_rebuild()
RETURNS BIGINT
LANGUAGE plpgsql
AS $$
DECLARE
    v_seq     BIGINT;
    v_events  BIGINT;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'analytics_rebuild must run in READ COMMITTED (it is %)',
            current_setting('transaction_isolation');
    END IF;
    PERFORM pg_advisory_xact_lock(analytics_lock_key());
    LOCK TABLE events, events_relays, relay_metadata IN SHARE MODE;
    -- No writer is in flight: every number handed out is final.
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END
    INTO v_seq FROM analytics_seq AS s;

    DELETE FROM analytics_kind_pubkeys;
    DELETE FROM analytics_pubkeys;
    DELETE FROM analytics_kinds;
    DELETE FROM analytics_minutes;
    DELETE FROM analytics_hours;
    DELETE FROM analytics_relays;
    DELETE FROM analytics_relay_checks;
    DELETE FROM analytics_kind_relays;
    DELETE FROM analytics_pubkey_relays;

    INSERT INTO analytics_kind_pubkeys (pubkey, kind, event_count)
    SELECT e.pubkey, e.kind, count(*) FROM events AS e GROUP BY e.pubkey, e.kind;
    INSERT INTO analytics_pubkeys (pubkey_hex, event_count, unique_kinds)
    SELECT encode(kp.pubkey, 'hex'), sum(kp.event_count), count(*)
    FROM analytics_kind_pubkeys AS kp GROUP BY kp.pubkey;
    INSERT INTO analytics_kinds (kind, event_count, unique_pubkeys)
    SELECT kp.kind, sum(kp.event_count), count(*)
    FROM analytics_kind_pubkeys AS kp GROUP BY kp.kind;
    INSERT INTO analytics_minutes (minute_start, event_count)
    SELECT analytics_minute(e.created_at), count(*)
    FROM events AS e
    WHERE e.created_at >= now_epoch() - analytics_bucket_horizon()
    GROUP BY 1;
    INSERT INTO analytics_hours (hour_start, event_count)
    SELECT analytics_hour(m.minute_start), sum(m.event_count)
    FROM analytics_minutes AS m GROUP BY 1;
    INSERT INTO analytics_relays (relay_url, event_count, first_seen_at, last_seen_at)
    SELECT s.relay_url, count(*), min(s.seen_at), max(s.seen_at)
    FROM events_relays AS s GROUP BY s.relay_url;
    INSERT INTO analytics_kind_relays (kind, relay_url, event_count)
    SELECT e.kind, s.relay_url, count(*)
    FROM events_relays AS s JOIN events AS e ON e.id = s.event_id
    GROUP BY e.kind, s.relay_url;
    INSERT INTO analytics_pubkey_relays (pubkey_hex, relay_url, event_count)
    SELECT encode(e.pubkey, 'hex'), s.relay_url, count(*)
    FROM events_relays AS s JOIN events AS e ON e.id = s.event_id
    GROUP BY e.pubkey, s.relay_url;
    INSERT INTO analytics_relay_checks
    SELECT * FROM analytics_relay_checks_of(
        ARRAY(SELECT DISTINCT m.relay_url FROM relay_metadata AS m), v_seq);

    SELECT coalesce(sum(k.event_count), 0) INTO v_events FROM analytics_kinds AS k;
    UPDATE analytics_state
    SET watermark = v_seq,
        safe_seq = v_seq,
        pending_seq = NULL,
        pending_snapshot = NULL,
        total_events = v_events,
        regular_events = (SELECT coalesce(sum(k.event_count), 0) FROM analytics_kinds AS k
                          WHERE event_category(k.kind) = 'regular'),
        replaceable_events = (SELECT coalesce(sum(k.event_count), 0) FROM analytics_kinds AS k
                              WHERE event_category(k.kind) = 'replaceable'),
        ephemeral_events = (SELECT coalesce(sum(k.event_count), 0) FROM analytics_kinds AS k
                            WHERE event_category(k.kind) = 'ephemeral'),
        addressable_events = (SELECT coalesce(sum(k.event_count), 0) FROM analytics_kinds AS k
                              WHERE event_category(k.kind) = 'addressable'),
        other_events = (SELECT coalesce(sum(k.event_count), 0) FROM analytics_kinds AS k
                        WHERE event_category(k.kind) = 'other'),
        unique_pubkeys = (SELECT count(*) FROM analytics_pubkeys),
        unique_kinds = (SELECT count(*) FROM analytics_kinds),
        refreshed_at = now_epoch(),
        rebuilt_at = now_epoch();
    RETURN v_events;
END
$$;

COMMENT ON FUNCTION analytics_rebuild() IS
    'Recomputes all analytics summaries from the base tables (blocks ingestion while it runs); returns events counted';

-- ---------------------------------------------------------------------------
-- delete_orphan_events(p_batch INTEGER DEFAULT 10000) -> INTEGER
--   As in 004 (deletes up to p_batch events without any events_relays row,
--   returns how many; call repeatedly until it returns 0), and also removes
--   the deleted events that were already folded from the summaries, in the
--   same transaction. Candidates are found before any lock is taken, so the
--   search (a scan of events on a large archive) holds up neither ingestion
--   nor the refresher.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION delete_orphan_events(p_batch INTEGER DEFAULT 10000)
RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_ids      BYTEA[];
    v_deleted  INTEGER;
    v_pk       BYTEA[];
    v_kind     INTEGER[];
    v_ts       BIGINT[];
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'delete_orphan_events must run in READ COMMITTED (it is %)',
            current_setting('transaction_isolation');
    END IF;
    SELECT array_agg(c.id) INTO v_ids
    FROM (
        SELECT e.id
        FROM events AS e
        WHERE NOT EXISTS (SELECT 1 FROM events_relays AS er WHERE er.event_id = e.id)
        LIMIT greatest(coalesce(p_batch, 10000), 0)
    ) AS c;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;

    -- The refresher's lock first (the same order as analytics_rebuild), then
    -- the lock that waits for in-flight ingestion and holds new sightings
    -- back until commit, so a sighting committed concurrently never loses
    -- its event.
    PERFORM pg_advisory_xact_lock(analytics_lock_key());
    LOCK TABLE events_relays IN SHARE MODE;

    WITH del AS (
        DELETE FROM events AS e
        WHERE e.id = ANY (v_ids)
          AND NOT EXISTS (SELECT 1 FROM events_relays AS er WHERE er.event_id = e.id)
        RETURNING e.pubkey, e.kind, e.created_at, e.ingest_seq
    )
    SELECT count(*),
           array_agg(del.pubkey) FILTER (WHERE f.folded),
           array_agg(del.kind) FILTER (WHERE f.folded),
           array_agg(del.created_at) FILTER (WHERE f.folded)
    INTO v_deleted, v_pk, v_kind, v_ts
    FROM del
    CROSS JOIN LATERAL (
        SELECT del.ingest_seq IS NULL
            OR del.ingest_seq <= (SELECT s.watermark FROM analytics_state AS s) AS folded
    ) AS f;
    PERFORM analytics_apply_events(v_pk, v_kind, v_ts, -1);
    RETURN v_deleted;
END
$$;

COMMENT ON FUNCTION delete_orphan_events(INTEGER) IS
    'Deletes up to p_batch events without any events_relays row, keeping the analytics summaries exact; returns rows deleted';

-- ---------------------------------------------------------------------------
-- The statistics views of 005, same names, columns and types, now reading
-- the summaries plus the tail. Keyed views are a UNION ALL of the summary
-- rows the tail does not touch (excluded with a hashed NOT IN, a filter that
-- keeps the index order) and the rows the tail touches, merged: so
-- `ORDER BY event_count DESC LIMIT n` or `WHERE relay_url = ...` walks an
-- index instead of aggregating every author. The exclusion is a condition
-- on the outer query (`merged OR key NOT IN tail`), not a WHERE inside the
-- first branch: the planner pushes it into the branches and still builds a
-- Merge Append over the summary's index, which it does not do for a UNION
-- ALL branch with a WHERE of its own (PostgreSQL 15).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE VIEW events_statistics AS
SELECT
    st.total_events + tk.n                                AS total_events,
    st.unique_pubkeys + np.new_pubkeys                    AS unique_pubkeys,
    st.unique_kinds + nk.new_kinds                        AS unique_kinds,
    st.regular_events + tk.regular_events                 AS regular_events,
    st.replaceable_events + tk.replaceable_events         AS replaceable_events,
    st.ephemeral_events + tk.ephemeral_events             AS ephemeral_events,
    st.addressable_events + tk.addressable_events         AS addressable_events,
    st.other_events + tk.other_events                     AS other_events,
    (SELECT min(e.created_at) FROM events AS e)           AS earliest_event_timestamp,
    (SELECT max(e.created_at) FROM events AS e)           AS latest_event_timestamp,
    w.events_last_hour,
    w.events_last_24h,
    w.events_last_7d
FROM analytics_state AS st
CROSS JOIN (
    SELECT
        count(*)                                                          AS n,
        count(*) FILTER (WHERE event_category(pe.kind) = 'regular')       AS regular_events,
        count(*) FILTER (WHERE event_category(pe.kind) = 'replaceable')   AS replaceable_events,
        count(*) FILTER (WHERE event_category(pe.kind) = 'ephemeral')     AS ephemeral_events,
        count(*) FILTER (WHERE event_category(pe.kind) = 'addressable')   AS addressable_events,
        count(*) FILTER (WHERE event_category(pe.kind) = 'other')         AS other_events
    FROM analytics_pending_events AS pe
) AS tk
CROSS JOIN (
    SELECT count(DISTINCT pe.pubkey) AS new_pubkeys
    FROM analytics_pending_events AS pe
    WHERE NOT EXISTS (
        SELECT 1 FROM analytics_pubkeys AS ap WHERE ap.pubkey_hex = encode(pe.pubkey, 'hex'))
) AS np
CROSS JOIN (
    SELECT count(DISTINCT pe.kind) AS new_kinds
    FROM analytics_pending_events AS pe
    WHERE NOT EXISTS (SELECT 1 FROM analytics_kinds AS ak WHERE ak.kind = pe.kind)
) AS nk
CROSS JOIN (
    -- Events created at or after now - window: those of the partial first
    -- minute straight from the created_at index, the whole minutes up to the
    -- next hour and the whole hours after it from the summaries, and the
    -- tail's. Written out per window (not over a VALUES list) so the bounds
    -- are constants to the planner, which then estimates the ranges from
    -- statistics.
    SELECT
        (SELECT count(*) FROM events AS e
         WHERE e.created_at >= now_epoch() - 3600
           AND e.created_at < analytics_minute_ceil(now_epoch() - 3600))
      + (SELECT coalesce(sum(m.event_count), 0)::BIGINT FROM analytics_minutes AS m
         WHERE m.minute_start >= analytics_minute_ceil(now_epoch() - 3600)
           AND m.minute_start < analytics_hour_ceil(analytics_minute_ceil(now_epoch() - 3600)))
      + (SELECT coalesce(sum(h.event_count), 0)::BIGINT FROM analytics_hours AS h
         WHERE h.hour_start >= analytics_hour_ceil(analytics_minute_ceil(now_epoch() - 3600)))
      + (SELECT count(*) FROM analytics_pending_events AS pe
         WHERE pe.created_at >= analytics_minute_ceil(now_epoch() - 3600)) AS events_last_hour,
        (SELECT count(*) FROM events AS e
         WHERE e.created_at >= now_epoch() - 86400
           AND e.created_at < analytics_minute_ceil(now_epoch() - 86400))
      + (SELECT coalesce(sum(m.event_count), 0)::BIGINT FROM analytics_minutes AS m
         WHERE m.minute_start >= analytics_minute_ceil(now_epoch() - 86400)
           AND m.minute_start < analytics_hour_ceil(analytics_minute_ceil(now_epoch() - 86400)))
      + (SELECT coalesce(sum(h.event_count), 0)::BIGINT FROM analytics_hours AS h
         WHERE h.hour_start >= analytics_hour_ceil(analytics_minute_ceil(now_epoch() - 86400)))
      + (SELECT count(*) FROM analytics_pending_events AS pe
         WHERE pe.created_at >= analytics_minute_ceil(now_epoch() - 86400)) AS events_last_24h,
        (SELECT count(*) FROM events AS e
         WHERE e.created_at >= now_epoch() - 604800
           AND e.created_at < analytics_minute_ceil(now_epoch() - 604800))
      + (SELECT coalesce(sum(m.event_count), 0)::BIGINT FROM analytics_minutes AS m
         WHERE m.minute_start >= analytics_minute_ceil(now_epoch() - 604800)
           AND m.minute_start < analytics_hour_ceil(analytics_minute_ceil(now_epoch() - 604800)))
      + (SELECT coalesce(sum(h.event_count), 0)::BIGINT FROM analytics_hours AS h
         WHERE h.hour_start >= analytics_hour_ceil(analytics_minute_ceil(now_epoch() - 604800)))
      + (SELECT count(*) FROM analytics_pending_events AS pe
         WHERE pe.created_at >= analytics_minute_ceil(now_epoch() - 604800)) AS events_last_7d
) AS w;

COMMENT ON VIEW events_statistics IS
    'Global event counts, NIP-01 category breakdown, created_at range and recent-window counts (summary-backed)';

CREATE OR REPLACE VIEW kind_counts_total AS
SELECT u.kind, u.event_count, u.unique_pubkeys
FROM (
    SELECT ak.kind, ak.event_count, ak.unique_pubkeys, FALSE AS merged
    FROM analytics_kinds AS ak
    UNION ALL
    SELECT t.kind,
           coalesce(ak.event_count, 0) + t.event_count,
           coalesce(ak.unique_pubkeys, 0) + t.new_pubkeys,
           TRUE
    FROM (
        SELECT pe.kind,
               count(*) AS event_count,
               count(DISTINCT pe.pubkey) FILTER (WHERE kp.pubkey IS NULL) AS new_pubkeys
        FROM analytics_pending_events AS pe
        LEFT JOIN analytics_kind_pubkeys AS kp ON kp.pubkey = pe.pubkey AND kp.kind = pe.kind
        GROUP BY pe.kind
    ) AS t
    LEFT JOIN analytics_kinds AS ak ON ak.kind = t.kind
) AS u
WHERE u.merged OR u.kind NOT IN (SELECT pe.kind FROM analytics_pending_events AS pe);

COMMENT ON VIEW kind_counts_total IS 'Events and distinct authors per kind (summary-backed)';

CREATE OR REPLACE VIEW pubkey_counts_total AS
SELECT u.pubkey_hex, u.event_count, u.unique_kinds
FROM (
    SELECT ap.pubkey_hex, ap.event_count, ap.unique_kinds, FALSE AS merged
    FROM analytics_pubkeys AS ap
    UNION ALL
    SELECT t.pubkey_hex,
           coalesce(ap.event_count, 0) + t.event_count,
           coalesce(ap.unique_kinds, 0) + t.new_kinds,
           TRUE
    FROM (
        SELECT encode(pe.pubkey, 'hex') AS pubkey_hex,
               count(*) AS event_count,
               count(DISTINCT pe.kind) FILTER (WHERE kp.kind IS NULL) AS new_kinds
        FROM analytics_pending_events AS pe
        LEFT JOIN analytics_kind_pubkeys AS kp ON kp.pubkey = pe.pubkey AND kp.kind = pe.kind
        GROUP BY pe.pubkey
    ) AS t
    LEFT JOIN analytics_pubkeys AS ap ON ap.pubkey_hex = t.pubkey_hex
) AS u
WHERE u.merged
   OR u.pubkey_hex NOT IN (SELECT encode(pe.pubkey, 'hex') FROM analytics_pending_events AS pe);

COMMENT ON VIEW pubkey_counts_total IS 'Events and distinct kinds per author (hex pubkey) (summary-backed)';

CREATE OR REPLACE VIEW kind_counts_by_relay AS
SELECT u.kind, u.relay_url, u.event_count
FROM (
    SELECT kr.kind, kr.relay_url, kr.event_count, FALSE AS merged
    FROM analytics_kind_relays AS kr
    UNION ALL
    SELECT t.kind, t.relay_url, coalesce(kr.event_count, 0) + t.event_count, TRUE
    FROM (
        SELECT pp.kind, pp.relay_url, count(*) AS event_count
        FROM analytics_pending_pairs AS pp
        GROUP BY pp.kind, pp.relay_url
    ) AS t
    LEFT JOIN analytics_kind_relays AS kr ON kr.kind = t.kind AND kr.relay_url = t.relay_url
) AS u
WHERE u.merged
   OR (u.kind, u.relay_url) NOT IN (SELECT pp.kind, pp.relay_url FROM analytics_pending_pairs AS pp);

COMMENT ON VIEW kind_counts_by_relay IS 'Events per (kind, relay) (summary-backed)';

CREATE OR REPLACE VIEW pubkey_counts_by_relay AS
SELECT u.pubkey_hex, u.relay_url, u.event_count
FROM (
    SELECT pr.pubkey_hex, pr.relay_url, pr.event_count, FALSE AS merged
    FROM analytics_pubkey_relays AS pr
    UNION ALL
    SELECT t.pubkey_hex, t.relay_url, coalesce(pr.event_count, 0) + t.event_count, TRUE
    FROM (
        SELECT encode(pp.pubkey, 'hex') AS pubkey_hex, pp.relay_url, count(*) AS event_count
        FROM analytics_pending_pairs AS pp
        GROUP BY pp.pubkey, pp.relay_url
    ) AS t
    LEFT JOIN analytics_pubkey_relays AS pr
        ON pr.pubkey_hex = t.pubkey_hex AND pr.relay_url = t.relay_url
) AS u
WHERE u.merged
   OR (u.pubkey_hex, u.relay_url) NOT IN (
        SELECT encode(pp.pubkey, 'hex'), pp.relay_url FROM analytics_pending_pairs AS pp);

COMMENT ON VIEW pubkey_counts_by_relay IS 'Events per (author, relay) (summary-backed)';

CREATE OR REPLACE VIEW relays_statistics AS
SELECT
    r.url                                                        AS relay_url,
    r.network,
    r.inserted_at,
    coalesce(ar.event_count, 0) + coalesce(t.event_count, 0)     AS event_count,
    least(ar.first_seen_at, t.first_seen_at)                     AS first_seen_at,
    greatest(ar.last_seen_at, t.last_seen_at)                    AS last_seen_at,
    CASE WHEN live.relay_url IS NULL THEN c.avg_rtt_open ELSE live.avg_rtt_open END   AS avg_rtt_open,
    CASE WHEN live.relay_url IS NULL THEN c.avg_rtt_read ELSE live.avg_rtt_read END   AS avg_rtt_read,
    CASE WHEN live.relay_url IS NULL THEN c.avg_rtt_write ELSE live.avg_rtt_write END AS avg_rtt_write
FROM relays AS r
LEFT JOIN analytics_relays AS ar ON ar.relay_url = r.url
LEFT JOIN (
    SELECT s.relay_url, count(*) AS event_count,
           min(s.seen_at) AS first_seen_at, max(s.seen_at) AS last_seen_at
    FROM events_relays AS s
    WHERE s.ingest_seq > analytics_watermark()
    GROUP BY s.relay_url
) AS t ON t.relay_url = r.url
LEFT JOIN analytics_relay_checks AS c ON c.relay_url = r.url
-- Relays with snapshots not folded yet: their averages computed here, as in 005.
LEFT JOIN (
    SELECT tm.relay_url, rtt.avg_rtt_open, rtt.avg_rtt_read, rtt.avg_rtt_write
    FROM analytics_pending_check_relays AS tm
    CROSS JOIN LATERAL (
        SELECT round(avg(n.rtt_open), 2)  AS avg_rtt_open,
               round(avg(n.rtt_read), 2)  AS avg_rtt_read,
               round(avg(n.rtt_write), 2) AS avg_rtt_write
        FROM (
            SELECT m.nip66_id
            FROM relay_metadata AS m
            WHERE m.relay_url = tm.relay_url AND m.nip66_id IS NOT NULL
            ORDER BY m.generated_at DESC
            LIMIT 10
        ) AS recent
        JOIN nip66 AS n ON n.id = recent.nip66_id
    ) AS rtt
) AS live ON live.relay_url = r.url;

COMMENT ON VIEW relays_statistics IS
    'Per-relay event count, first/last seen_at, and average RTTs (ms) over the last 10 checks (summary-backed)';

CREATE OR REPLACE VIEW relay_metadata_latest AS
SELECT
    u.relay_url, u.network, u.inserted_at, u.generated_at, u.nip11_id, u.nip66_id,
    u.name, u.description, u.banner, u.icon, u.pubkey, u.contact, u.supported_nips,
    u.software, u.version, u.privacy_policy, u.terms_of_service, u.limitation,
    u.extra_fields, u.nip11_raw, u.rtt_open, u.rtt_read, u.rtt_write, u.openable,
    u.readable, u.writable, u.dns, u.tls, u.http, u.geo, u.nip66_raw
FROM (
    SELECT r.url AS relay_url, r.network, r.inserted_at, c.generated_at, c.nip11_id, c.nip66_id,
           c.name, c.description, c.banner, c.icon, c.pubkey, c.contact, c.supported_nips,
           c.software, c.version, c.privacy_policy, c.terms_of_service, c.limitation,
           c.extra_fields, c.nip11_raw, c.rtt_open, c.rtt_read, c.rtt_write, c.openable,
           c.readable, c.writable, c.dns, c.tls, c.http, c.geo, c.nip66_raw,
           FALSE AS live
    FROM relays AS r
    JOIN analytics_relay_checks AS c ON c.relay_url = r.url
    UNION ALL
    -- Relays with snapshots not folded yet: as in 005.
    SELECT r.url, r.network, r.inserted_at, rm.generated_at, rm.nip11_id, rm.nip66_id,
           n11.name, n11.description, n11.banner, n11.icon, n11.pubkey, n11.contact,
           n11.supported_nips, n11.software, n11.version, n11.privacy_policy,
           n11.terms_of_service, n11.limitation, n11.extra_fields, n11.raw,
           n66.rtt_open, n66.rtt_read, n66.rtt_write, n66.openable, n66.readable, n66.writable,
           n66.dns, n66.tls, n66.http, n66.geo, n66.raw,
           TRUE
    FROM analytics_pending_check_relays AS tm
    JOIN relays AS r ON r.url = tm.relay_url
    CROSS JOIN LATERAL (
        SELECT m.generated_at, m.nip11_id, m.nip66_id
        FROM relay_metadata AS m
        WHERE m.relay_url = r.url
        ORDER BY m.generated_at DESC
        LIMIT 1
    ) AS rm
    LEFT JOIN nip11 AS n11 ON n11.id = rm.nip11_id
    LEFT JOIN nip66 AS n66 ON n66.id = rm.nip66_id
) AS u
WHERE u.live OR u.relay_url NOT IN (SELECT tm.relay_url FROM analytics_pending_check_relays AS tm);

COMMENT ON VIEW relay_metadata_latest IS
    'Newest monitoring snapshot per relay joined with its NIP-11 document and check result (summary-backed)';

-- The operator's view of the refresher.
CREATE VIEW analytics_status AS
SELECT
    st.watermark,
    st.safe_seq,
    st.pending_seq,
    (SELECT count(*) FROM events AS e WHERE e.ingest_seq > st.watermark)          AS pending_events,
    (SELECT count(*) FROM events_relays AS s WHERE s.ingest_seq > st.watermark)   AS pending_sightings,
    (SELECT count(*) FROM relay_metadata AS m WHERE m.ingest_seq > st.watermark)  AS pending_snapshots,
    st.refreshed_at,
    st.rebuilt_at
FROM analytics_state AS st;

COMMENT ON VIEW analytics_status IS
    'Analytics refresher progress: watermark, proven-safe bound, rows waiting to be folded';

-- Read access for the API role (007 also grants it by default privileges,
-- which apply only to objects created by the role that ran 007).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'bigbrotr_reader') THEN
        GRANT SELECT ON analytics_state, analytics_kinds, analytics_pubkeys,
                        analytics_kind_pubkeys, analytics_minutes, analytics_hours, analytics_relays,
                        analytics_relay_checks, analytics_kind_relays, analytics_pubkey_relays,
                        analytics_pending_events, analytics_pending_pairs, analytics_pending_check_relays,
                        analytics_status
            TO bigbrotr_reader;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE WARNING 'cannot grant the analytics tables to bigbrotr_reader: %', SQLERRM;
END
$$;

-- The initial build: counts every row that predates this migration (the
-- ALTER TABLEs above hold their tables exclusively until commit).
SELECT analytics_rebuild();
