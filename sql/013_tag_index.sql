-- 013_tag_index.sql
--
-- NIP-01 tag filters (#p, #e, #t, ...: a single-letter tag name, matching the tag's first
-- value) served by an index, newest first, so `#p=<key>&limit=100` reads ~100 index entries
-- instead of scanning events.tags.
--
-- event_tags: one row per (event, indexable tag), where an indexable tag is one whose name
-- is a single ASCII letter and whose first value is a string; at most the first 2000
-- indexable tags of an event are indexed (duplicates within an event counted once).
-- `tag` is the first 16 bytes of sha256(letter || 0x00 || value) (UTF-8, and the value's
-- exact bytes: for events stored with raw_canonical, the signed value with its U+0000, not
-- the U+FFFD copy in events.tags). A fixed 16-byte key keeps index entries small and bounded
-- whatever the value's length (a `t` or `d` value can be kilobytes); two distinct values
-- sharing a key would need a 2^64-work collision search on truncated SHA-256, so the key is
-- taken as the value (no re-check against events.tags).
--
-- created_at is the event's, so the btree (tag, created_at, event_id) returns an event's
-- matches newest first and a LIMIT stops the scan; kind rides along for filters by kind.
-- The sink writes these rows in the transaction that inserts the event (COPY); events that
-- predate this migration are indexed by a background backfill (engine/tag_backfill.rs) that
-- walks events by id; until it has finished (service_state 'tag_index' payload done = true)
-- tag filters keep using the jsonb scan, so answers are right throughout.

CREATE TABLE IF NOT EXISTS event_tags (
    tag         BYTEA    NOT NULL,
    created_at  BIGINT   NOT NULL,
    event_id    BYTEA    NOT NULL,
    kind        INTEGER  NOT NULL
);

COMMENT ON TABLE event_tags IS
    'NIP-01 tag filter index: one row per (event, single-letter tag with a string first value)';
COMMENT ON COLUMN event_tags.tag IS
    'First 16 bytes of sha256(letter || 0x00 || first value), the value''s exact UTF-8 bytes';

-- Unique, so the backfill and the sink can both offer a row (ON CONFLICT DO NOTHING).
CREATE UNIQUE INDEX IF NOT EXISTS event_tags_tag_created_at_idx
    ON event_tags (tag, created_at, event_id);

-- The key of a tag value, as the engine computes it (tag_key in engine/filter_sql.rs).
CREATE OR REPLACE FUNCTION tag_key(p_letter TEXT, p_value TEXT)
RETURNS BYTEA
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT substring(sha256(convert_to(p_letter, 'UTF8') || '\x00'::BYTEA
                            || convert_to(p_value, 'UTF8')) FROM 1 FOR 16)
$$;

-- The distinct keys of an event's indexable tags (the first 2000), from its jsonb tags. For
-- events without U+0000 (jsonb cannot hold it; the engine computes those rows itself).
CREATE OR REPLACE FUNCTION event_tag_keys(p_tags JSONB)
RETURNS SETOF BYTEA
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT DISTINCT tag_key(t ->> 0, t ->> 1)
    FROM (
        SELECT t
        FROM jsonb_array_elements(CASE WHEN jsonb_typeof(p_tags) = 'array' THEN p_tags
                                       ELSE '[]'::JSONB END) WITH ORDINALITY AS a (t, n)
        WHERE jsonb_typeof(t) = 'array'
          AND jsonb_typeof(t -> 0) = 'string'
          AND (t ->> 0) ~ '^[A-Za-z]$'
          AND jsonb_typeof(t -> 1) = 'string'
        ORDER BY n
        LIMIT 2000
    ) AS x
$$;

-- The keys of an event's exact tags, from its canonical serialization (whose strings may
-- hold the escape \u0000, which text cannot hold unescaped): each \u0000 escape becomes a
-- private-use mark, decoded, and the mark's UTF-8 bytes (EE 80 80, which cannot start at an
-- odd hex offset in valid UTF-8) become 0x00 in the bytes hashed. A serialization already
-- holding the mark is left unindexed (the engine's sink and backfill index it exactly).
CREATE OR REPLACE FUNCTION canonical_tag_keys(p_canonical TEXT)
RETURNS SETOF BYTEA
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT DISTINCT substring(sha256(convert_to(t ->> 0, 'UTF8') || '\x00'::BYTEA
               || decode(replace(encode(convert_to(t ->> 1, 'UTF8'), 'hex'), 'ee8080', '00'), 'hex'))
           FROM 1 FOR 16)
    FROM (
        SELECT t
        FROM (SELECT regexp_replace(regexp_replace(p_canonical,
                  '((?:^|[^\\])(?:\\\\)*)\\u0000', '\1' || chr(57344), 'g'),
                  '((?:^|[^\\])(?:\\\\)*)\\u0000', '\1' || chr(57344), 'g')::JSON AS j
              WHERE position(chr(57344) IN p_canonical) = 0) AS c,
             json_array_elements(c.j -> 4) WITH ORDINALITY AS a (t, n)
        WHERE json_typeof(t) = 'array'
          AND json_typeof(t -> 0) = 'string'
          AND (t ->> 0) ~ '^[A-Za-z]$'
          AND json_typeof(t -> 1) = 'string'
        ORDER BY n
        LIMIT 2000
    ) AS x
$$;

-- insert_event (012) keeps its signature; it now indexes the new event's tags too.
CREATE OR REPLACE FUNCTION insert_event(
    p_event_id BYTEA, p_pubkey BYTEA, p_created_at BIGINT, p_kind INTEGER,
    p_tags JSONB, p_content TEXT, p_sig BYTEA, p_relay_url TEXT,
    p_relay_network TEXT, p_relay_inserted_at BIGINT, p_seen_at BIGINT,
    p_raw_canonical TEXT DEFAULT NULL
)
RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
DECLARE
    v_new BOOLEAN;
BEGIN
    INSERT INTO relays (url, network, inserted_at)
    VALUES (p_relay_url, coalesce(p_relay_network, 'clearnet'),
            coalesce(p_relay_inserted_at, now_epoch()))
    ON CONFLICT (url) DO NOTHING;

    INSERT INTO events (id, pubkey, created_at, kind, tags, content, sig, raw_canonical)
    VALUES (p_event_id, p_pubkey, p_created_at, p_kind, p_tags, p_content, p_sig, p_raw_canonical)
    ON CONFLICT (id) DO NOTHING;
    v_new := FOUND;

    IF v_new AND p_raw_canonical IS NULL THEN
        INSERT INTO event_tags (tag, created_at, event_id, kind)
        SELECT k, p_created_at, p_event_id, p_kind FROM event_tag_keys(p_tags) AS k
        ON CONFLICT DO NOTHING;
    ELSIF v_new THEN
        -- p_tags has U+FFFD where the event was signed with U+0000: the keys come from the
        -- exact tags in raw_canonical instead.
        INSERT INTO event_tags (tag, created_at, event_id, kind)
        SELECT k, p_created_at, p_event_id, p_kind FROM canonical_tag_keys(p_raw_canonical) AS k
        ON CONFLICT DO NOTHING;
    END IF;

    INSERT INTO events_relays (event_id, relay_url, seen_at, created_at)
    VALUES (p_event_id, p_relay_url, coalesce(p_seen_at, now_epoch()), p_created_at)
    ON CONFLICT (event_id, relay_url) DO NOTHING;

    RETURN v_new;
END
$$;

-- The backfill's progress: `after` (hex id) is the last event indexed in id order; `done`
-- once every event that predates this migration is indexed. An empty archive has nothing
-- to backfill.
INSERT INTO service_state (service_name, state_key, payload, updated_at)
SELECT 'tag_index', '',
       jsonb_build_object('done', NOT EXISTS (SELECT 1 FROM events), 'after', ''),
       now_epoch()
ON CONFLICT (service_name, state_key) DO NOTHING;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'bigbrotr_reader') THEN
        GRANT SELECT ON event_tags TO bigbrotr_reader;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE WARNING 'cannot grant event_tags to bigbrotr_reader: %', SQLERRM;
END
$$;
