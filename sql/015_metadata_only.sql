-- 015_metadata_only.sql
--
-- A metadata-only archive ([archive] bodies = false, like BigBrotr's LilBrotr): events keep
-- id, pubkey, created_at and kind (and their tag-index rows and sightings) while tags,
-- content and sig stay NULL. An archive is one or the other for its whole life: the engine
-- records the mode in service_state ('archive', 'mode') at its first start and refuses to
-- start under the other (engine/db.rs, ensure_archive_mode).
--
-- Dropping NOT NULL changes only the catalog (no rewrite, no scan). The CHECK keeps a row
-- whole or bodiless, never half; NOT VALID, because every row written before this migration
-- already had all three (they were NOT NULL), so a validating scan of a large archive would
-- hold the table's lock for nothing.

ALTER TABLE events
    ALTER COLUMN tags DROP NOT NULL,
    ALTER COLUMN content DROP NOT NULL,
    ALTER COLUMN sig DROP NOT NULL;

DO $$
BEGIN
    ALTER TABLE events ADD CONSTRAINT events_body_whole_or_none
        CHECK ((tags IS NULL) = (content IS NULL) AND (content IS NULL) = (sig IS NULL)
               AND (raw_canonical IS NULL OR sig IS NOT NULL)) NOT VALID;
EXCEPTION
    WHEN duplicate_object THEN NULL;
END
$$;

COMMENT ON COLUMN events.tags IS
    'The event''s tags (jsonb); NULL, with content and sig, in a metadata-only archive';
