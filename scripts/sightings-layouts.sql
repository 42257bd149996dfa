-- sightings-layouts.sql: what one sighting row costs PostgreSQL in a few table layouts
-- (BENCHMARKS.md, "Why 150,000 frames/s is out of reach here").
--
--   psql -d <scratch database> -f scripts/sightings-layouts.sql
--
-- 100,000 events seen on 8 relays each (800,000 sightings, in the order the sink sends them:
-- chunks of 64 events per relay) are first built in temporary tables, then inserted into each
-- layout with psql's \timing on; divide each time by 800,000 (or 100,000 event rows for the
-- array layout, which holds 8 sightings a row). Creates and drops tables named bb_layout_*.

\set ON_ERROR_STOP on
SET client_min_messages = warning;
DROP TABLE IF EXISTS bb_layout_seed, bb_layout_no_seen_idx, bb_layout_relay_id,
    bb_layout_relay_id_no_seq, bb_layout_arrays;
DROP SEQUENCE IF EXISTS bb_layout_seq;
CREATE SEQUENCE bb_layout_seq CACHE 1;  -- as analytics_seq (008)

CREATE TEMP TABLE src_url AS
SELECT sha256(int8send(e)) AS event_id, 'wss://relay-' || r || '.example-relay.net' AS relay_url,
       1700000000 + e AS seen_at
FROM generate_series(0, 99999) AS e, generate_series(0, 7) AS r
ORDER BY e / 64, r, e;
CREATE TEMP TABLE src_id AS
SELECT sha256(int8send(e)) AS event_id, r AS relay_id, 1700000000 + e AS seen_at
FROM generate_series(0, 99999) AS e, generate_series(0, 7) AS r
ORDER BY e / 64, r, e;
CREATE TEMP TABLE src_arr AS
SELECT sha256(int8send(e)) AS event_id, array_agg(r) AS relay_ids,
       array_agg(1700000000::bigint + e) AS seen_ats
FROM generate_series(0, 99999) AS e, generate_series(0, 7) AS r
GROUP BY e ORDER BY e;

-- The seed's layout (002 + 003 + 008): three indexes.
CREATE TABLE bb_layout_seed (event_id bytea NOT NULL, relay_url text NOT NULL,
    seen_at bigint NOT NULL, ingest_seq bigint DEFAULT nextval('bb_layout_seq'),
    PRIMARY KEY (event_id, relay_url));
CREATE INDEX ON bb_layout_seed (relay_url, seen_at DESC);
CREATE INDEX ON bb_layout_seed (ingest_seq) WHERE ingest_seq IS NOT NULL;
-- Since 010: without the (relay_url, seen_at) index.
CREATE TABLE bb_layout_no_seen_idx (event_id bytea NOT NULL, relay_url text NOT NULL,
    seen_at bigint NOT NULL, ingest_seq bigint DEFAULT nextval('bb_layout_seq'),
    PRIMARY KEY (event_id, relay_url));
CREATE INDEX ON bb_layout_no_seen_idx (ingest_seq) WHERE ingest_seq IS NOT NULL;
-- A relay surrogate key.
CREATE TABLE bb_layout_relay_id (event_id bytea NOT NULL, relay_id int NOT NULL,
    seen_at bigint NOT NULL, ingest_seq bigint DEFAULT nextval('bb_layout_seq'),
    PRIMARY KEY (event_id, relay_id));
CREATE INDEX ON bb_layout_relay_id (ingest_seq) WHERE ingest_seq IS NOT NULL;
-- A relay surrogate key, no insertion number.
CREATE TABLE bb_layout_relay_id_no_seq (event_id bytea NOT NULL, relay_id int NOT NULL,
    seen_at bigint NOT NULL, PRIMARY KEY (event_id, relay_id));
-- One row per event, relays in arrays.
CREATE TABLE bb_layout_arrays (event_id bytea PRIMARY KEY, relay_ids int[] NOT NULL,
    seen_ats bigint[] NOT NULL, ingest_seq bigint DEFAULT nextval('bb_layout_seq'));
CREATE INDEX ON bb_layout_arrays (ingest_seq) WHERE ingest_seq IS NOT NULL;
CHECKPOINT;

\timing on
INSERT INTO bb_layout_seed (event_id, relay_url, seen_at) SELECT * FROM src_url;
INSERT INTO bb_layout_no_seen_idx (event_id, relay_url, seen_at) SELECT * FROM src_url;
INSERT INTO bb_layout_relay_id (event_id, relay_id, seen_at) SELECT * FROM src_id;
INSERT INTO bb_layout_relay_id_no_seq (event_id, relay_id, seen_at) SELECT * FROM src_id;
INSERT INTO bb_layout_arrays (event_id, relay_ids, seen_ats) SELECT * FROM src_arr;
\timing off

SELECT relname AS layout, pg_size_pretty(pg_total_relation_size(oid)) AS size
FROM pg_class WHERE relname LIKE 'bb_layout_%' AND relkind = 'r' ORDER BY relname;
DROP TABLE bb_layout_seed, bb_layout_no_seen_idx, bb_layout_relay_id,
    bb_layout_relay_id_no_seq, bb_layout_arrays;
DROP SEQUENCE bb_layout_seq;
