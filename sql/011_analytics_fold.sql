-- =============================================================================
-- 011_analytics_fold.sql: a set-based fold, so the refresher keeps up with a
-- bulk load, and the refresher's lag for the operator.
--
-- Profile of one fold of 50,000 rows under 009 (EXPLAIN ANALYZE of each
-- statement, auto_explain; 300,000 generated events): ~2.8 s, of which
--   * ~1.7 s in INSERT ... ON CONFLICT DO UPDATE of the keyed summaries, one
--     speculative insertion per key (analytics_pubkey_relays 32,000 keys:
--     ~0.9 s; analytics_pubkeys, analytics_kind_pubkeys, analytics_kind_relays:
--     0.2-0.4 s each), plus RETURNING + re-join of every upserted key to find
--     the 0 -> n transitions behind the distinct counts;
--   * ~0.3 s joining the batch's sightings to their events: the planner hashed
--     the batch and scanned all of events, and all of events_relays for the
--     events whose sightings came first, so each fold grew with the archive;
--   * array_agg of the batch, unnest in analytics_apply_events, and the
--     per-kind event_category calls re-run for each of six subqueries.
-- The cost was per row and per key, so the refresher folded a fixed
-- ~10,000-25,000 rows/s, less than a bulk run writes.
--
-- The fold below (analytics_fold, called by analytics_refresh):
--   * reads the batch once per side from the ingest_seq indexes and
--     aggregates it first, so every summary row is touched once per fold
--     whatever the number of rows behind it;
--   * learns which keys are new from one join with the summary, then UPDATEs
--     the existing keys and INSERTs the new ones (no speculative insertion;
--     the refresher, holding analytics_lock_key(), is the only writer of the
--     summaries), and counts the new (author, kind) pairs, authors and kinds
--     from that same join;
--   * pairs a sighting with its event by hashing the two halves of the batch
--     together; only a sighting whose event is not in the batch looks it up
--     (primary key of events). A sighting whose event is not folded yet is
--     remembered in analytics_early_sightings, and the batch that folds the
--     event pairs it from there: new events no longer probe events_relays
--     (one index descent per event, ~20 % of a large fold), and nothing
--     scans a base table.
-- Its cost per fold is then roughly (distinct keys touched) + (rows read),
-- so a large batch folds many rows per key: engine/analytics.rs grows the
-- batch while it is behind and folds back-to-back until it has caught up.
--
-- Semantics are those of 009: same bound, same watermark, same counts (the
-- deletion path, analytics_apply_events with sign -1, is unchanged).
--
-- The lag (analytics_lag): numbers handed out past the watermark, and the
-- age of the oldest row not folded yet, bounded from above by the refresher's
-- marks: each refresh records (the last number handed out, the time); a row
-- numbered past a mark was written after its time, so the oldest unfolded
-- row (watermark + 1) is younger than the newest mark at or below the
-- watermark (0 seconds when nothing is past the watermark).
-- =============================================================================

SELECT pg_advisory_xact_lock(analytics_lock_key());

-- (seq, at): at time `at` (Unix seconds) the last number handed out was seq.
CREATE TABLE analytics_seq_marks (
    seq  BIGINT            PRIMARY KEY,
    at   DOUBLE PRECISION  NOT NULL
);

COMMENT ON TABLE analytics_seq_marks IS
    'Refresher marks (last number handed out, time) behind analytics_lag.lag_seconds';

-- The last refresh before this migration is the best mark known for the
-- watermark; now, for the last number handed out.
INSERT INTO analytics_seq_marks (seq, at)
SELECT st.watermark, coalesce(st.refreshed_at, st.rebuilt_at, now_epoch())::DOUBLE PRECISION
FROM analytics_state AS st;
INSERT INTO analytics_seq_marks (seq, at)
SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END,
       extract(epoch FROM now())::DOUBLE PRECISION
FROM analytics_seq AS s
ON CONFLICT (seq) DO NOTHING;

-- Folded sightings whose event was not folded at the time (missing, or
-- numbered past the watermark): the fold that brings the event pairs them
-- and deletes them. Rows stay only for sightings whose event never arrives.
CREATE TABLE analytics_early_sightings (
    event_id   BYTEA  NOT NULL,
    relay_url  TEXT   NOT NULL,
    PRIMARY KEY (event_id, relay_url)
);

COMMENT ON TABLE analytics_early_sightings IS
    'Folded sightings whose event is not folded yet (paired when it is)';

-- Those that exist now (one anti-join over the archive, once).
INSERT INTO analytics_early_sightings (event_id, relay_url)
SELECT s.event_id, s.relay_url
FROM events_relays AS s
WHERE (s.ingest_seq IS NULL OR s.ingest_seq <= (SELECT watermark FROM analytics_state))
  AND NOT EXISTS (
      SELECT 1 FROM events AS e
      WHERE e.id = s.event_id
        AND (e.ingest_seq IS NULL OR e.ingest_seq <= (SELECT watermark FROM analytics_state)));

-- Folds the rows numbered in (p_wm, p_hi] into the summaries. Internal: the
-- caller holds analytics_lock_key() and moves the watermark to p_hi in the
-- same transaction.
CREATE OR REPLACE FUNCTION analytics_fold(
    p_wm                  BIGINT,
    p_hi                  BIGINT,
    OUT events_folded     BIGINT,
    OUT sightings_folded  BIGINT,
    OUT snapshots_folded  BIGINT
)
LANGUAGE plpgsql
-- Plans for the batch's actual range: after five calls plpgsql may switch to a
-- generic plan, whose default estimate for an ingest_seq range (a few rows)
-- turns the joins of the batch's halves into nested loops over CTE scans,
-- quadratic in the batch (a 440,000-row fold ran for minutes).
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    v_urls  TEXT[];
BEGIN
    -- Events: (author, kind), authors, kinds, minutes, hours, global counters.
    WITH e AS MATERIALIZED (
        SELECT ev.pubkey, ev.kind, ev.created_at
        FROM events AS ev
        WHERE ev.ingest_seq > p_wm AND ev.ingest_seq <= p_hi
    ), dk AS MATERIALIZED (
        -- Per (author, kind); is_new: the pair had no folded event before.
        SELECT d.pubkey, d.kind, d.n, kp.pubkey IS NULL AS is_new
        FROM (SELECT e.pubkey, e.kind, count(*) AS n FROM e GROUP BY e.pubkey, e.kind) AS d
        LEFT JOIN analytics_kind_pubkeys AS kp ON kp.pubkey = d.pubkey AND kp.kind = d.kind
    ), kp_upd AS (
        UPDATE analytics_kind_pubkeys AS t
        SET event_count = t.event_count + dk.n
        FROM dk
        WHERE NOT dk.is_new AND t.pubkey = dk.pubkey AND t.kind = dk.kind
    ), kp_ins AS (
        INSERT INTO analytics_kind_pubkeys (pubkey, kind, event_count)
        SELECT dk.pubkey, dk.kind, dk.n FROM dk WHERE dk.is_new
    ), dp AS MATERIALIZED (
        -- Per author: events, new kinds; is_new: a new author.
        SELECT d.pubkey_hex, d.n, d.nk, ap.pubkey_hex IS NULL AS is_new
        FROM (
            SELECT encode(dk.pubkey, 'hex') AS pubkey_hex, sum(dk.n)::BIGINT AS n,
                   count(*) FILTER (WHERE dk.is_new) AS nk
            FROM dk GROUP BY dk.pubkey
        ) AS d
        LEFT JOIN analytics_pubkeys AS ap ON ap.pubkey_hex = d.pubkey_hex
    ), p_upd AS (
        UPDATE analytics_pubkeys AS t
        SET event_count = t.event_count + dp.n,
            unique_kinds = t.unique_kinds + dp.nk
        FROM dp
        WHERE NOT dp.is_new AND t.pubkey_hex = dp.pubkey_hex
    ), p_ins AS (
        INSERT INTO analytics_pubkeys (pubkey_hex, event_count, unique_kinds)
        SELECT dp.pubkey_hex, dp.n, dp.nk FROM dp WHERE dp.is_new
    ), dkk AS MATERIALIZED (
        -- Per kind: events, new authors; is_new: a new kind.
        SELECT d.kind, d.n, d.np, event_category(d.kind) AS category, ak.kind IS NULL AS is_new
        FROM (
            SELECT dk.kind, sum(dk.n)::BIGINT AS n, count(*) FILTER (WHERE dk.is_new) AS np
            FROM dk GROUP BY dk.kind
        ) AS d
        LEFT JOIN analytics_kinds AS ak ON ak.kind = d.kind
    ), k_upd AS (
        UPDATE analytics_kinds AS t
        SET event_count = t.event_count + dkk.n,
            unique_pubkeys = t.unique_pubkeys + dkk.np
        FROM dkk
        WHERE NOT dkk.is_new AND t.kind = dkk.kind
    ), k_ins AS (
        INSERT INTO analytics_kinds (kind, event_count, unique_pubkeys)
        SELECT dkk.kind, dkk.n, dkk.np FROM dkk WHERE dkk.is_new
    ), dm AS MATERIALIZED (
        SELECT analytics_minute(e.created_at) AS minute_start, count(*) AS n
        FROM e
        WHERE e.created_at >= now_epoch() - analytics_bucket_horizon()
        GROUP BY 1
    ), m_up AS (
        INSERT INTO analytics_minutes AS t (minute_start, event_count)
        SELECT dm.minute_start, dm.n FROM dm
        ON CONFLICT (minute_start) DO UPDATE SET event_count = t.event_count + EXCLUDED.event_count
    ), h_up AS (
        INSERT INTO analytics_hours AS t (hour_start, event_count)
        SELECT analytics_hour(dm.minute_start), sum(dm.n)::BIGINT FROM dm
        GROUP BY 1
        ON CONFLICT (hour_start) DO UPDATE SET event_count = t.event_count + EXCLUDED.event_count
    ), g AS (
        SELECT coalesce(sum(dkk.n), 0)::BIGINT AS n,
               coalesce(sum(dkk.n) FILTER (WHERE dkk.category = 'regular'), 0)::BIGINT AS regular,
               coalesce(sum(dkk.n) FILTER (WHERE dkk.category = 'replaceable'), 0)::BIGINT AS replaceable,
               coalesce(sum(dkk.n) FILTER (WHERE dkk.category = 'ephemeral'), 0)::BIGINT AS ephemeral,
               coalesce(sum(dkk.n) FILTER (WHERE dkk.category = 'addressable'), 0)::BIGINT AS addressable,
               coalesce(sum(dkk.n) FILTER (WHERE dkk.category = 'other'), 0)::BIGINT AS other,
               count(*) FILTER (WHERE dkk.is_new) AS new_kinds,
               (SELECT count(*) FROM dp WHERE dp.is_new) AS new_pubkeys
        FROM dkk
    )
    UPDATE analytics_state AS st
    SET total_events = st.total_events + g.n,
        regular_events = st.regular_events + g.regular,
        replaceable_events = st.replaceable_events + g.replaceable,
        ephemeral_events = st.ephemeral_events + g.ephemeral,
        addressable_events = st.addressable_events + g.addressable,
        other_events = st.other_events + g.other,
        unique_pubkeys = st.unique_pubkeys + g.new_pubkeys,
        unique_kinds = st.unique_kinds + g.new_kinds
    FROM g
    RETURNING g.n INTO events_folded;

    -- Sightings: per relay, and the (event, relay) pairs that become
    -- complete: a sighting folded now of an event folded now or before, or
    -- an event folded now with a sighting folded before it.
    WITH s AS MATERIALIZED (
        SELECT er.event_id, er.relay_url, er.seen_at
        FROM events_relays AS er
        WHERE er.ingest_seq > p_wm AND er.ingest_seq <= p_hi
    ), e AS MATERIALIZED (
        SELECT ev.id, ev.pubkey, ev.kind
        FROM events AS ev
        WHERE ev.ingest_seq > p_wm AND ev.ingest_seq <= p_hi
    ), r AS MATERIALIZED (
        SELECT s.relay_url, count(*) AS n, min(s.seen_at) AS first_seen_at,
               max(s.seen_at) AS last_seen_at
        FROM s GROUP BY s.relay_url
    ), r_up AS (
        INSERT INTO analytics_relays AS t (relay_url, event_count, first_seen_at, last_seen_at)
        SELECT r.relay_url, r.n, r.first_seen_at, r.last_seen_at FROM r
        ON CONFLICT (relay_url) DO UPDATE
            SET event_count = t.event_count + EXCLUDED.event_count,
                first_seen_at = least(t.first_seen_at, EXCLUDED.first_seen_at),
                last_seen_at = greatest(t.last_seen_at, EXCLUDED.last_seen_at)
    ), x AS MATERIALIZED (
        -- Sightings whose event is not in this batch: the event folded
        -- before (kind set, from its primary key), or not folded yet (kind
        -- NULL: its event is missing or numbered past p_hi).
        SELECT y.event_id, y.relay_url, ev.kind, ev.pubkey
        FROM (SELECT s.event_id, s.relay_url FROM s
              WHERE NOT EXISTS (SELECT 1 FROM e WHERE e.id = s.event_id)) AS y
        LEFT JOIN LATERAL (
            SELECT ev.kind, ev.pubkey FROM events AS ev
            WHERE ev.id = y.event_id AND (ev.ingest_seq IS NULL OR ev.ingest_seq <= p_wm)
            OFFSET 0
        ) AS ev ON TRUE
    ), early_ins AS (
        -- Remembered until their event folds (below, in a later batch).
        INSERT INTO analytics_early_sightings (event_id, relay_url)
        SELECT x.event_id, x.relay_url FROM x WHERE x.kind IS NULL
    ), early AS (
        -- Events of this batch with a sighting folded before them.
        DELETE FROM analytics_early_sightings AS es
        USING e
        WHERE es.event_id = e.id
        RETURNING e.kind, e.pubkey, es.relay_url
    ), p AS MATERIALIZED (
        -- Both halves in this batch: one hash join.
        SELECT e.kind, e.pubkey, s.relay_url
        FROM s JOIN e ON e.id = s.event_id
        UNION ALL
        -- A new sighting of an event folded before.
        SELECT x.kind, x.pubkey, x.relay_url FROM x WHERE x.kind IS NOT NULL
        UNION ALL
        -- A new event with a sighting folded before it.
        SELECT early.kind, early.pubkey, early.relay_url FROM early
    ), kr_up AS (
        INSERT INTO analytics_kind_relays AS t (kind, relay_url, event_count)
        SELECT p.kind, p.relay_url, count(*) FROM p GROUP BY p.kind, p.relay_url
        ON CONFLICT (kind, relay_url) DO UPDATE SET event_count = t.event_count + EXCLUDED.event_count
    ), dpr AS MATERIALIZED (
        SELECT d.pubkey_hex, d.relay_url, d.n, pr.pubkey_hex IS NULL AS is_new
        FROM (
            SELECT encode(p.pubkey, 'hex') AS pubkey_hex, p.relay_url, count(*) AS n
            FROM p GROUP BY p.pubkey, p.relay_url
        ) AS d
        LEFT JOIN analytics_pubkey_relays AS pr
            ON pr.pubkey_hex = d.pubkey_hex AND pr.relay_url = d.relay_url
    ), pr_upd AS (
        UPDATE analytics_pubkey_relays AS t
        SET event_count = t.event_count + dpr.n
        FROM dpr
        WHERE NOT dpr.is_new AND t.pubkey_hex = dpr.pubkey_hex AND t.relay_url = dpr.relay_url
    ), pr_ins AS (
        INSERT INTO analytics_pubkey_relays (pubkey_hex, relay_url, event_count)
        SELECT dpr.pubkey_hex, dpr.relay_url, dpr.n FROM dpr WHERE dpr.is_new
    )
    SELECT coalesce(sum(r.n), 0)::BIGINT INTO sightings_folded FROM r;

    -- The relays with new snapshots (as in 009).
    SELECT array_agg(DISTINCT m.relay_url), count(*) INTO v_urls, snapshots_folded
    FROM relay_metadata AS m
    WHERE m.ingest_seq > p_wm AND m.ingest_seq <= p_hi;
    IF v_urls IS NOT NULL THEN
        DELETE FROM analytics_relay_checks WHERE relay_url = ANY (v_urls);
        INSERT INTO analytics_relay_checks SELECT * FROM analytics_relay_checks_of(v_urls, p_hi);
    END IF;
END
$$;

COMMENT ON FUNCTION analytics_fold(BIGINT, BIGINT) IS
    'Internal: folds the rows numbered in (p_wm, p_hi] into the analytics summaries, set-based';


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
    v_start     BIGINT;
    v_xid       xid8;
    v_own       BOOLEAN := FALSE;
    v_now_snap  pg_snapshot;
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
    -- The last number handed out when this refresh began (a mark for analytics_lag).
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END
    INTO v_start FROM analytics_seq AS s;

    -- The safe bound, exactly as in 009.
    FOR attempt IN 1..2 LOOP
        IF v_xid IS NULL THEN
            EXIT WHEN pg_current_xact_id_if_assigned() IS NOT NULL;
            SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END
            INTO v_seq FROM analytics_seq AS s;
            IF v_seq <= v_safe THEN
                v_seq := NULL;
                EXIT;
            END IF;
            SELECT pg_current_xact_id() INTO v_xid;
            v_own := TRUE;
        END IF;
        SELECT pg_current_snapshot() INTO v_now_snap;
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

        SELECT f.events_folded, f.sightings_folded, f.snapshots_folded
        INTO events_folded, sightings_folded, snapshots_folded
        FROM analytics_fold(v_wm, v_hi) AS f;

        v_wm := v_hi;
    END IF;

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
    INSERT INTO analytics_seq_marks AS t (seq, at)
    VALUES (v_start, extract(epoch FROM now())::DOUBLE PRECISION)
    ON CONFLICT (seq) DO UPDATE SET at = greatest(t.at, EXCLUDED.at);
    -- Only the newest mark at or below the watermark is still needed.
    DELETE FROM analytics_seq_marks
    WHERE seq < (SELECT max(m.seq) FROM analytics_seq_marks AS m WHERE m.seq <= v_wm);
    caught_up := v_wm >= v_safe;
    waiting := v_seq IS NOT NULL;
END
$$;

COMMENT ON FUNCTION analytics_refresh(INTEGER) IS
    'Folds at most p_batch new rows into the analytics summaries (one transaction); repeat until caught_up';

-- The refresher's lag: numbers handed out past the watermark (rows not
-- folded yet, plus numbers drawn by duplicates that were never written), and
-- seconds since the views were last known current (0 when caught up).
CREATE OR REPLACE VIEW analytics_lag AS
SELECT greatest(q.last_seq - st.watermark, 0)::BIGINT AS lag_seq,
       CASE WHEN q.last_seq <= st.watermark THEN 0::DOUBLE PRECISION
            ELSE greatest(extract(epoch FROM clock_timestamp())::DOUBLE PRECISION
                          - coalesce((SELECT max(m.at) FROM analytics_seq_marks AS m
                                      WHERE m.seq <= st.watermark),
                                     (SELECT min(m.at) FROM analytics_seq_marks AS m), 0), 0)
       END AS lag_seconds,
       st.watermark,
       q.last_seq
FROM analytics_state AS st
CROSS JOIN (
    SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END AS last_seq
    FROM analytics_seq AS s
) AS q;

COMMENT ON VIEW analytics_lag IS
    'Analytics refresher lag: numbers past the watermark and seconds since the views were last current';

-- As in 009, and it also recomputes analytics_early_sightings and leaves one
-- mark (the views are current).
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
    DELETE FROM analytics_early_sightings;

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

    INSERT INTO analytics_early_sightings (event_id, relay_url)
    SELECT s.event_id, s.relay_url
    FROM events_relays AS s
    WHERE NOT EXISTS (SELECT 1 FROM events AS e WHERE e.id = s.event_id);

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
    DELETE FROM analytics_seq_marks;
    INSERT INTO analytics_seq_marks (seq, at)
    VALUES (v_seq, extract(epoch FROM now())::DOUBLE PRECISION);
    RETURN v_events;
END
$$;

COMMENT ON FUNCTION analytics_rebuild() IS
    'Recomputes all analytics summaries from the base tables (blocks ingestion while it runs); returns events counted';

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'bigbrotr_reader') THEN
        GRANT SELECT ON analytics_lag, analytics_seq, analytics_seq_marks, analytics_early_sightings
            TO bigbrotr_reader;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE WARNING 'cannot grant analytics_lag to bigbrotr_reader: %', SQLERRM;
END
$$;
