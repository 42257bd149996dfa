-- =============================================================================
-- 010_sightings_index.sql: one index fewer on events_relays.
--
-- events_relays gets a row per (event, relay) sighting: on a busy archive it
-- takes several rows per event, and every index on it is paid for on every
-- COPY. (relay_url, seen_at DESC) served the per-relay counts and first/last
-- seen times of 005's relays_statistics; since 008 those come from the
-- summary tables, and no query of the engine, the API or the DVM filters
-- sightings by relay. Dropping it cuts the database work per sighting by
-- about a third (BENCHMARKS.md). An operator who scans "what relay X served"
-- can bring it back without blocking ingestion:
--   CREATE INDEX CONCURRENTLY events_relays_relay_url_seen_at_idx
--       ON events_relays (relay_url, seen_at DESC);
-- =============================================================================

DROP INDEX IF EXISTS events_relays_relay_url_seen_at_idx;
