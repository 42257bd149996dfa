-- 005_views.sql
--
-- Read-side views (names and column names follow the seed). They are plain
-- views computed on every read; the statistics views scan whole tables, so
-- on a large archive they are for occasional use (summary tables may later
-- replace them under the same names).

-- ---------------------------------------------------------------------------
-- relay_metadata_latest: the newest snapshot of each relay, with its NIP-11
-- document and check result. Relays never checked do not appear.
-- ---------------------------------------------------------------------------
CREATE VIEW relay_metadata_latest AS
SELECT
    r.url               AS relay_url,
    r.network,
    r.inserted_at,
    rm.generated_at,
    rm.nip11_id,
    rm.nip66_id,
    n11.name,
    n11.description,
    n11.banner,
    n11.icon,
    n11.pubkey,
    n11.contact,
    n11.supported_nips,
    n11.software,
    n11.version,
    n11.privacy_policy,
    n11.terms_of_service,
    n11.limitation,
    n11.extra_fields,
    n11.raw             AS nip11_raw,
    n66.rtt_open,
    n66.rtt_read,
    n66.rtt_write,
    n66.openable,
    n66.readable,
    n66.writable,
    n66.dns,
    n66.tls,
    n66.http,
    n66.geo,
    n66.raw             AS nip66_raw
FROM relays AS r
CROSS JOIN LATERAL (
    SELECT m.generated_at, m.nip11_id, m.nip66_id
    FROM relay_metadata AS m
    WHERE m.relay_url = r.url
    ORDER BY m.generated_at DESC
    LIMIT 1
) AS rm
LEFT JOIN nip11 AS n11 ON n11.id = rm.nip11_id
LEFT JOIN nip66 AS n66 ON n66.id = rm.nip66_id;

COMMENT ON VIEW relay_metadata_latest IS
    'Newest monitoring snapshot per relay joined with its NIP-11 document and check result';

-- ---------------------------------------------------------------------------
-- events_statistics: one row of global event metrics. Categories follow the
-- NIP-01 kind ranges (event_category); other_events counts kinds in no range.
-- The time windows are by created_at relative to now.
-- ---------------------------------------------------------------------------
CREATE VIEW events_statistics AS
SELECT
    count(*)                                                        AS total_events,
    count(DISTINCT e.pubkey)                                        AS unique_pubkeys,
    count(DISTINCT e.kind)                                          AS unique_kinds,
    count(*) FILTER (WHERE event_category(e.kind) = 'regular')      AS regular_events,
    count(*) FILTER (WHERE event_category(e.kind) = 'replaceable')  AS replaceable_events,
    count(*) FILTER (WHERE event_category(e.kind) = 'ephemeral')    AS ephemeral_events,
    count(*) FILTER (WHERE event_category(e.kind) = 'addressable')  AS addressable_events,
    count(*) FILTER (WHERE event_category(e.kind) = 'other')        AS other_events,
    min(e.created_at)                                               AS earliest_event_timestamp,
    max(e.created_at)                                               AS latest_event_timestamp,
    count(*) FILTER (WHERE e.created_at >= t.now_s - 3600)            AS events_last_hour,
    count(*) FILTER (WHERE e.created_at >= t.now_s - 86400)           AS events_last_24h,
    count(*) FILTER (WHERE e.created_at >= t.now_s - 604800)          AS events_last_7d
FROM events AS e
CROSS JOIN (SELECT now_epoch() AS now_s) AS t;

COMMENT ON VIEW events_statistics IS
    'Global event counts, NIP-01 category breakdown, created_at range and recent-window counts';

-- ---------------------------------------------------------------------------
-- relays_statistics: per relay, its events (sightings) and the average
-- round-trip times over its last 10 check results.
-- ---------------------------------------------------------------------------
CREATE VIEW relays_statistics AS
SELECT
    r.url                          AS relay_url,
    r.network,
    r.inserted_at,
    coalesce(ev.event_count, 0)    AS event_count,
    ev.first_seen_at,
    ev.last_seen_at,
    rtt.avg_rtt_open,
    rtt.avg_rtt_read,
    rtt.avg_rtt_write
FROM relays AS r
LEFT JOIN (
    SELECT er.relay_url,
           count(*)        AS event_count,
           min(er.seen_at) AS first_seen_at,
           max(er.seen_at) AS last_seen_at
    FROM events_relays AS er
    GROUP BY er.relay_url
) AS ev ON ev.relay_url = r.url
LEFT JOIN LATERAL (
    SELECT round(avg(n.rtt_open), 2)  AS avg_rtt_open,
           round(avg(n.rtt_read), 2)  AS avg_rtt_read,
           round(avg(n.rtt_write), 2) AS avg_rtt_write
    FROM (
        SELECT m.nip66_id
        FROM relay_metadata AS m
        WHERE m.relay_url = r.url AND m.nip66_id IS NOT NULL
        ORDER BY m.generated_at DESC
        LIMIT 10
    ) AS recent
    JOIN nip66 AS n ON n.id = recent.nip66_id
) AS rtt ON TRUE;

COMMENT ON VIEW relays_statistics IS
    'Per-relay event count, first/last seen_at, and average RTTs (ms) over the last 10 checks';

-- ---------------------------------------------------------------------------
-- Counts by kind and by author, overall and per relay.
-- ---------------------------------------------------------------------------
CREATE VIEW kind_counts_total AS
SELECT
    e.kind,
    count(*)                 AS event_count,
    count(DISTINCT e.pubkey) AS unique_pubkeys
FROM events AS e
GROUP BY e.kind;

COMMENT ON VIEW kind_counts_total IS 'Events and distinct authors per kind';

CREATE VIEW kind_counts_by_relay AS
SELECT
    e.kind,
    er.relay_url,
    count(*) AS event_count
FROM events_relays AS er
JOIN events AS e ON e.id = er.event_id
GROUP BY e.kind, er.relay_url;

COMMENT ON VIEW kind_counts_by_relay IS 'Events per (kind, relay)';

CREATE VIEW pubkey_counts_total AS
SELECT
    encode(e.pubkey, 'hex')  AS pubkey_hex,
    count(*)                 AS event_count,
    count(DISTINCT e.kind)   AS unique_kinds
FROM events AS e
GROUP BY e.pubkey;

COMMENT ON VIEW pubkey_counts_total IS 'Events and distinct kinds per author (hex pubkey)';

CREATE VIEW pubkey_counts_by_relay AS
SELECT
    encode(e.pubkey, 'hex') AS pubkey_hex,
    er.relay_url,
    count(*)                AS event_count
FROM events_relays AS er
JOIN events AS e ON e.id = er.event_id
GROUP BY e.pubkey, er.relay_url;

COMMENT ON VIEW pubkey_counts_by_relay IS 'Events per (author, relay)';
