-- =============================================================================
-- 016_created_at_id_index.sql: the newest-first index covers the id.
--
-- events_created_at_idx held created_at alone, so every query that needs the
-- id of a time range read the 3 GB heap for it: a NIP-77 NEG-OPEN over the
-- newest 1,000,000 events took 2.3 s in a sequential scan (5M-event archive,
-- BENCHMARKS.md "Archive as a relay"), and `ORDER BY created_at DESC, id DESC`
-- (the REST API's and the relay endpoint's order, and their page cursor
-- `(created_at, id) < (…)`) sorted each second's ties. (created_at DESC,
-- id DESC) answers both from the index alone (the same NEG-OPEN: 0.33 s, an
-- index-only scan); it replaces the old index, whose every use it covers, so
-- ingestion still maintains one index on created_at.
--
-- Built inside the migration's transaction, so writes wait for it: about 4 s
-- per 5M events here. On a large archive, build it first without blocking
-- ingestion, and this migration then only drops the old one:
--   CREATE INDEX CONCURRENTLY events_created_at_id_idx
--       ON events (created_at DESC, id DESC);
-- =============================================================================

CREATE INDEX IF NOT EXISTS events_created_at_id_idx ON events (created_at DESC, id DESC);
DROP INDEX IF EXISTS events_created_at_idx;
