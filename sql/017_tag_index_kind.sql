-- =============================================================================
-- 017_tag_index_kind.sql: the tag index carries each row's kind.
--
-- A tag filter with `kinds` (`#t` + kinds [1], `#e` + kinds [7], the common
-- shapes) read event_tags' heap for every index entry to check its kind: one
-- random page read per candidate, since the rows are inserted in event order
-- and read in tag order (cold, `#t` + kinds [1] on 5M events: 105 heap pages for
-- 100 rows, 82 ms; BENCHMARKS.md "Archive as a relay"). With `kind` in the
-- index (INCLUDE: stored in the leaf, not part of the key), the filter is
-- checked in an index-only scan. The entry does not grow: `kind` fits in the
-- padding before the 8-byte alignment of each entry (80 bytes either way), so
-- ingestion maintains an index of the same size as before.
--
-- Built inside the migration's transaction, so writes wait for it. On a large
-- archive, build it first without blocking ingestion, and this migration then
-- only drops the old one:
--   CREATE UNIQUE INDEX CONCURRENTLY event_tags_tag_created_at_id_kind_idx
--       ON event_tags (tag, created_at, event_id) INCLUDE (kind);
--
-- A pre-built index that a failed CONCURRENTLY build left INVALID (cancelled,
-- or the server restarted) would be kept by IF NOT EXISTS and never used, while
-- the valid old one is dropped: such an index is rebuilt here. 016's index,
-- whose file gives the same advice, is checked too.
-- =============================================================================

DO $$
DECLARE
    ix regclass;
BEGIN
    FOREACH ix IN ARRAY ARRAY[to_regclass('events_created_at_id_idx'),
                              to_regclass('event_tags_tag_created_at_id_kind_idx')] LOOP
        IF ix IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_index WHERE indexrelid = ix AND NOT (indisvalid AND indisready)
        ) THEN
            RAISE NOTICE 'rebuilding index %, left invalid by a failed concurrent build', ix;
            EXECUTE format('REINDEX INDEX %s', ix);
        END IF;
    END LOOP;
END $$;

CREATE UNIQUE INDEX IF NOT EXISTS event_tags_tag_created_at_id_kind_idx
    ON event_tags (tag, created_at, event_id) INCLUDE (kind);
DROP INDEX IF EXISTS event_tags_tag_created_at_idx;
