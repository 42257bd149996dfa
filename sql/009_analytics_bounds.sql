-- =============================================================================
-- 009_analytics_bounds.sql: two corrections to the summaries of 008.
--
-- 1. The safe bound (see 008's header) is proven with the refresher's own
--    transaction id N, taken after reading the sequence, instead of a
--    snapshot's xmax: PostgreSQL reuses a backend's snapshot while no
--    transaction ends, so that xmax can predate transaction ids assigned
--    since, and a number drawn by such a transaction could be folded before
--    it committed (skipped for good). Now: any transaction holding a number
--    <= S got its id before the sequence was read, hence below N; once
--    pg_snapshot_xmin(now) >= N, all of them have ended.
-- 2. The statistics views merged the whole tail (rows numbered above the
--    watermark) from the base tables, so they slowed down in proportion to
--    how far the refresher lagged (a bulk load, the refresher stopped). The
--    event views now merge at most analytics_state.view_tail numbers past
--    the watermark (bigbrotr sets it from `analytics.view_tail`): exact
--    while the refresher keeps up; further behind they answer as of
--    watermark + view_tail (every row numbered up to that, none after;
--    earliest/latest_event_timestamp, read from the created_at index, stay
--    current) and remain fast. relay_metadata_latest still merges its whole
--    tail: at most one live lookup per relay, and the engine reads it to
--    tune the connectors, so it never lags. analytics_status says when the
--    views lag.
-- =============================================================================

-- A candidate waiting on the old snapshot test is dropped: the next refresh
-- derives a new one (nothing is folded past safe_seq meanwhile).
ALTER TABLE analytics_state
    ADD COLUMN pending_xid xid8   NULL,
    -- Numbers past the watermark the event views merge (see above).
    ADD COLUMN view_tail   BIGINT NOT NULL DEFAULT 2000 CHECK (view_tail >= 0);
UPDATE analytics_state SET pending_seq = NULL;
DROP VIEW analytics_status;
ALTER TABLE analytics_state DROP COLUMN pending_snapshot;

-- The highest number the event views merge: watermark + view_tail.
CREATE OR REPLACE FUNCTION analytics_view_bound()
RETURNS BIGINT
LANGUAGE sql STABLE PARALLEL RESTRICTED
AS $$ SELECT watermark + view_tail FROM analytics_state $$;

COMMENT ON FUNCTION analytics_view_bound() IS
    'The event views merge the rows numbered in (analytics_watermark(), analytics_view_bound()]';


-- ---------------------------------------------------------------------------
-- The tail: rows not folded yet, as views (inlined into the statistics views).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE VIEW analytics_pending_events AS
SELECT e.id, e.pubkey, e.kind, e.created_at
FROM events AS e
WHERE e.ingest_seq > analytics_watermark() AND e.ingest_seq <= analytics_view_bound();

COMMENT ON VIEW analytics_pending_events IS 'Events not folded yet that the views merge';

-- (event, relay) pairs not folded yet: a new sighting of any event, or a new
-- event with a sighting folded before it (a sighting may precede its event);
-- as analytics_refresh folds them with hi = analytics_view_bound().
CREATE OR REPLACE VIEW analytics_pending_pairs AS
SELECT e.kind, e.pubkey, s.relay_url
FROM events_relays AS s
JOIN events AS e ON e.id = s.event_id
WHERE s.ingest_seq > analytics_watermark() AND s.ingest_seq <= analytics_view_bound()
  AND (e.ingest_seq IS NULL OR e.ingest_seq <= analytics_view_bound())
UNION ALL
SELECT e.kind, e.pubkey, s.relay_url
FROM events AS e
JOIN events_relays AS s ON s.event_id = e.id
WHERE e.ingest_seq > analytics_watermark() AND e.ingest_seq <= analytics_view_bound()
  AND (s.ingest_seq IS NULL OR s.ingest_seq <= analytics_watermark());

COMMENT ON VIEW analytics_pending_pairs IS '(kind, author, relay) of the (event, relay) pairs not folded yet that the views merge';


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
    v_xid       xid8;
    v_own       BOOLEAN := FALSE;
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
    PERFORM pg_advisory_xact_lock(analytics_lock_key());
    SELECT * INTO v_state FROM analytics_state;
    v_wm := v_state.watermark;
    v_safe := v_state.safe_seq;
    v_seq := v_state.pending_seq;
    v_xid := v_state.pending_xid;

    FOR attempt IN 1..2 LOOP
        IF v_xid IS NULL THEN
            -- N must be assigned after A: once this transaction has an id, a
            -- new candidate waits for the next call.
            EXIT WHEN pg_current_xact_id_if_assigned() IS NOT NULL;
            -- Statement A: the last number handed out ...
            SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END
            INTO v_seq FROM analytics_seq AS s;
            IF v_seq <= v_safe THEN
                v_seq := NULL;
                EXIT;
            END IF;
            -- ... statement B: this transaction's own id, assigned after A.
            SELECT pg_current_xact_id() INTO v_xid;
            v_own := TRUE;
        END IF;
        SELECT pg_current_snapshot() INTO v_now_snap;
        -- Every transaction id below v_xid has ended (a snapshot's xmin counts
        -- its own transaction, so v_xid itself passes). Or, in a later call,
        -- v_xid was never assigned here: the candidate comes from another
        -- cluster (a restored dump, in which every row is committed).
        IF pg_snapshot_xmin(v_now_snap) >= v_xid
           OR (NOT v_own AND pg_snapshot_xmax(v_now_snap) <= v_xid) THEN
            v_safe := greatest(v_safe, v_seq);
            v_seq := NULL;
            v_xid := NULL;
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
        pending_xid = v_xid,
        refreshed_at = now_epoch();
    caught_up := v_wm >= v_safe;
    waiting := v_seq IS NOT NULL;
END
$$;

COMMENT ON FUNCTION analytics_refresh(INTEGER) IS
    'Folds at most p_batch new rows into the analytics summaries (one transaction); repeat until caught_up';


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
        pending_xid = NULL,
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


CREATE OR REPLACE VIEW events_statistics AS
-- The tail, read once.
WITH pe AS MATERIALIZED (
    SELECT t.pubkey, t.kind, t.created_at FROM analytics_pending_events AS t
)
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
    -- One event_category call per distinct kind, not per event.
    SELECT
        coalesce(sum(k.n), 0)::BIGINT                                          AS n,
        coalesce(sum(k.n) FILTER (WHERE k.category = 'regular'), 0)::BIGINT     AS regular_events,
        coalesce(sum(k.n) FILTER (WHERE k.category = 'replaceable'), 0)::BIGINT AS replaceable_events,
        coalesce(sum(k.n) FILTER (WHERE k.category = 'ephemeral'), 0)::BIGINT   AS ephemeral_events,
        coalesce(sum(k.n) FILTER (WHERE k.category = 'addressable'), 0)::BIGINT AS addressable_events,
        coalesce(sum(k.n) FILTER (WHERE k.category = 'other'), 0)::BIGINT       AS other_events
    FROM (
        SELECT event_category(g.kind) AS category, g.n
        FROM (SELECT pe.kind, count(*) AS n FROM pe GROUP BY pe.kind) AS g
    ) AS k
) AS tk
CROSS JOIN (
    SELECT count(DISTINCT pe.pubkey) AS new_pubkeys
    FROM pe
    WHERE NOT EXISTS (
        SELECT 1 FROM analytics_pubkeys AS ap WHERE ap.pubkey_hex = encode(pe.pubkey, 'hex'))
) AS np
CROSS JOIN (
    SELECT count(DISTINCT pe.kind) AS new_kinds
    FROM pe
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
           AND e.created_at < analytics_minute_ceil(now_epoch() - 3600)
           AND (e.ingest_seq IS NULL OR e.ingest_seq <= analytics_view_bound()))
      + (SELECT coalesce(sum(m.event_count), 0)::BIGINT FROM analytics_minutes AS m
         WHERE m.minute_start >= analytics_minute_ceil(now_epoch() - 3600)
           AND m.minute_start < analytics_hour_ceil(analytics_minute_ceil(now_epoch() - 3600)))
      + (SELECT coalesce(sum(h.event_count), 0)::BIGINT FROM analytics_hours AS h
         WHERE h.hour_start >= analytics_hour_ceil(analytics_minute_ceil(now_epoch() - 3600)))
      + (SELECT count(*) FROM pe
         WHERE pe.created_at >= analytics_minute_ceil(now_epoch() - 3600)) AS events_last_hour,
        (SELECT count(*) FROM events AS e
         WHERE e.created_at >= now_epoch() - 86400
           AND e.created_at < analytics_minute_ceil(now_epoch() - 86400)
           AND (e.ingest_seq IS NULL OR e.ingest_seq <= analytics_view_bound()))
      + (SELECT coalesce(sum(m.event_count), 0)::BIGINT FROM analytics_minutes AS m
         WHERE m.minute_start >= analytics_minute_ceil(now_epoch() - 86400)
           AND m.minute_start < analytics_hour_ceil(analytics_minute_ceil(now_epoch() - 86400)))
      + (SELECT coalesce(sum(h.event_count), 0)::BIGINT FROM analytics_hours AS h
         WHERE h.hour_start >= analytics_hour_ceil(analytics_minute_ceil(now_epoch() - 86400)))
      + (SELECT count(*) FROM pe
         WHERE pe.created_at >= analytics_minute_ceil(now_epoch() - 86400)) AS events_last_24h,
        (SELECT count(*) FROM events AS e
         WHERE e.created_at >= now_epoch() - 604800
           AND e.created_at < analytics_minute_ceil(now_epoch() - 604800)
           AND (e.ingest_seq IS NULL OR e.ingest_seq <= analytics_view_bound()))
      + (SELECT coalesce(sum(m.event_count), 0)::BIGINT FROM analytics_minutes AS m
         WHERE m.minute_start >= analytics_minute_ceil(now_epoch() - 604800)
           AND m.minute_start < analytics_hour_ceil(analytics_minute_ceil(now_epoch() - 604800)))
      + (SELECT coalesce(sum(h.event_count), 0)::BIGINT FROM analytics_hours AS h
         WHERE h.hour_start >= analytics_hour_ceil(analytics_minute_ceil(now_epoch() - 604800)))
      + (SELECT count(*) FROM pe
         WHERE pe.created_at >= analytics_minute_ceil(now_epoch() - 604800)) AS events_last_7d
) AS w;

COMMENT ON VIEW events_statistics IS
    'Global event counts, NIP-01 category breakdown, created_at range and recent-window counts (summary-backed)';

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
    WHERE s.ingest_seq > analytics_watermark() AND s.ingest_seq <= analytics_view_bound()
    GROUP BY s.relay_url
) AS t ON t.relay_url = r.url
LEFT JOIN analytics_relay_checks AS c ON c.relay_url = r.url
-- Relays with snapshots not folded yet (up to the views' bound, like the
-- event counts beside them): their averages computed here, as in 005.
LEFT JOIN (
    SELECT tm.relay_url, rtt.avg_rtt_open, rtt.avg_rtt_read, rtt.avg_rtt_write
    FROM (
        SELECT DISTINCT m.relay_url
        FROM relay_metadata AS m
        WHERE m.ingest_seq > analytics_watermark() AND m.ingest_seq <= analytics_view_bound()
    ) AS tm
    CROSS JOIN LATERAL (
        SELECT round(avg(n.rtt_open), 2)  AS avg_rtt_open,
               round(avg(n.rtt_read), 2)  AS avg_rtt_read,
               round(avg(n.rtt_write), 2) AS avg_rtt_write
        FROM (
            SELECT m.nip66_id
            FROM relay_metadata AS m
            WHERE m.relay_url = tm.relay_url AND m.nip66_id IS NOT NULL
              AND (m.ingest_seq IS NULL OR m.ingest_seq <= analytics_view_bound())
            ORDER BY m.generated_at DESC
            LIMIT 10
        ) AS recent
        JOIN nip66 AS n ON n.id = recent.nip66_id
    ) AS rtt
) AS live ON live.relay_url = r.url;

COMMENT ON VIEW relays_statistics IS
    'Per-relay event count, first/last seen_at, and average RTTs (ms) over the last 10 checks (summary-backed)';

-- The operator's view of the refresher.
CREATE VIEW analytics_status AS
SELECT
    st.watermark,
    st.safe_seq,
    st.pending_seq,
    st.view_tail,
    -- The event views merge numbers up to watermark + view_tail: they lag
    -- behind the archive when a row lies beyond.
    EXISTS (SELECT 1 FROM events AS e WHERE e.ingest_seq > st.watermark + st.view_tail)
      OR EXISTS (SELECT 1 FROM events_relays AS s WHERE s.ingest_seq > st.watermark + st.view_tail)
      OR EXISTS (SELECT 1 FROM relay_metadata AS m WHERE m.ingest_seq > st.watermark + st.view_tail)
                                                                                   AS views_lag,
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

