-- 004_procedures.sql
--
-- Write procedures (names from the seed) and orphan cleanup.
--
-- All inserts are idempotent (ON CONFLICT DO NOTHING): duplicates across
-- relays, batches and restarts are absorbed, and the first sighting of an
-- (event, relay) pair wins. A NULL network defaults to 'clearnet' and a NULL
-- inserted_at to the current time. The bulk path (the engine's sink) uses
-- binary COPY rather than these functions; they are for tools, tests and
-- low-volume writers, and define the semantics the sink reproduces.

-- ---------------------------------------------------------------------------
-- insert_relay(p_url, p_network, p_inserted_at) -> BOOLEAN
--   Records a relay URL (already normalized). Returns true if it was new.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION insert_relay(
    p_url          TEXT,
    p_network      TEXT,
    p_inserted_at  BIGINT
)
RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
BEGIN
    INSERT INTO relays (url, network, inserted_at)
    VALUES (p_url, coalesce(p_network, 'clearnet'), coalesce(p_inserted_at, now_epoch()))
    ON CONFLICT (url) DO NOTHING;
    RETURN FOUND;
END
$$;

COMMENT ON FUNCTION insert_relay(TEXT, TEXT, BIGINT) IS
    'Idempotent relay insert; returns true if the relay was new';

-- ---------------------------------------------------------------------------
-- insert_event(event fields, relay, p_seen_at [, p_raw_canonical]) -> BOOLEAN
--   Atomically records the relay, the event and the (event, relay) sighting.
--   Returns true if the event itself was new.
--   p_raw_canonical (optional, last): for an event whose content or tags
--   contain U+0000, the exact NIP-01 canonical serialization; p_content and
--   p_tags are then the copy with U+0000 replaced by U+FFFD (see
--   events.raw_canonical). The events CHECK verifies sha256 = id.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION insert_event(
    p_event_id           BYTEA,
    p_pubkey             BYTEA,
    p_created_at         BIGINT,
    p_kind               INTEGER,
    p_tags               JSONB,
    p_content            TEXT,
    p_sig                BYTEA,
    p_relay_url          TEXT,
    p_relay_network      TEXT,
    p_relay_inserted_at  BIGINT,
    p_seen_at            BIGINT,
    p_raw_canonical      TEXT DEFAULT NULL
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

    INSERT INTO events_relays (event_id, relay_url, seen_at)
    VALUES (p_event_id, p_relay_url, coalesce(p_seen_at, now_epoch()))
    ON CONFLICT (event_id, relay_url) DO NOTHING;

    RETURN v_new;
END
$$;

COMMENT ON FUNCTION insert_event(BYTEA, BYTEA, BIGINT, INTEGER, JSONB, TEXT, BYTEA, TEXT, TEXT, BIGINT, BIGINT, TEXT) IS
    'Atomic idempotent insert of relay + event + sighting; returns true if the event was new';

-- ---------------------------------------------------------------------------
-- insert_nip11(p_raw JSONB) -> BYTEA (the id)
--   Content-addressed insert of a NIP-11 document: id = sha256 of the UTF-8
--   of p_raw::text (jsonb's canonical text: keys sorted, no duplicate keys,
--   normalized whitespace), so documents that differ only in formatting or
--   key order share one row. Parses the common fields leniently.
--   The row is left locked FOR KEY SHARE until the caller's transaction ends,
--   so a concurrent delete_orphan_nip11 cannot remove it before the caller
--   references it; if such a cleanup removed it meanwhile, it is re-inserted.
--   Returns NULL when p_raw is NULL or JSON null.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION insert_nip11(p_raw JSONB)
RETURNS BYTEA
LANGUAGE plpgsql
AS $$
DECLARE
    v_id BYTEA;
BEGIN
    IF p_raw IS NULL OR jsonb_typeof(p_raw) = 'null' THEN
        RETURN NULL;
    END IF;
    v_id := sha256_utf8(p_raw::TEXT);
    FOR attempt IN 1..5 LOOP
        INSERT INTO nip11 (id, raw, name, description, banner, icon, pubkey, contact,
                           supported_nips, software, version, privacy_policy,
                           terms_of_service, limitation, extra_fields)
        VALUES (
            v_id,
            p_raw,
            lenient_text(p_raw -> 'name'),
            lenient_text(p_raw -> 'description'),
            lenient_text(p_raw -> 'banner'),
            lenient_text(p_raw -> 'icon'),
            lenient_text(p_raw -> 'pubkey'),
            lenient_text(p_raw -> 'contact'),
            lenient_int_array(p_raw -> 'supported_nips'),
            lenient_text(p_raw -> 'software'),
            lenient_text(p_raw -> 'version'),
            lenient_text(p_raw -> 'privacy_policy'),
            lenient_text(p_raw -> 'terms_of_service'),
            lenient_object(p_raw -> 'limitation'),
            CASE WHEN jsonb_typeof(p_raw) = 'object' THEN
                nullif(p_raw - ARRAY['name', 'description', 'banner', 'icon', 'pubkey',
                                     'contact', 'supported_nips', 'software', 'version',
                                     'privacy_policy', 'terms_of_service', 'limitation'],
                       '{}'::JSONB)
            END
        )
        ON CONFLICT (id) DO NOTHING;

        PERFORM 1 FROM nip11 WHERE id = v_id FOR KEY SHARE;
        IF FOUND THEN
            RETURN v_id;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'insert_nip11: document % kept being deleted concurrently', encode(v_id, 'hex');
END
$$;

COMMENT ON FUNCTION insert_nip11(JSONB) IS
    'Content-addressed NIP-11 insert (id = sha256(raw::text)); returns the id, row locked FOR KEY SHARE';

-- ---------------------------------------------------------------------------
-- insert_nip66(p_raw JSONB) -> BYTEA (the id)
--   Content-addressed insert of a relay check result, as insert_nip11.
--   Expected shape (every key optional, wrong shapes read as NULL):
--     {"rtt_open": ms, "rtt_read": ms, "rtt_write": ms,
--      "openable": bool, "readable": bool, "writable": bool,
--      "dns": {...}, "tls": {...}, "http": {...}, "geo": {...}, ...}
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION insert_nip66(p_raw JSONB)
RETURNS BYTEA
LANGUAGE plpgsql
AS $$
DECLARE
    v_id BYTEA;
BEGIN
    IF p_raw IS NULL OR jsonb_typeof(p_raw) = 'null' THEN
        RETURN NULL;
    END IF;
    v_id := sha256_utf8(p_raw::TEXT);
    FOR attempt IN 1..5 LOOP
        INSERT INTO nip66 (id, raw, rtt_open, rtt_read, rtt_write,
                           openable, readable, writable, dns, tls, http, geo)
        VALUES (
            v_id,
            p_raw,
            lenient_int(p_raw -> 'rtt_open'),
            lenient_int(p_raw -> 'rtt_read'),
            lenient_int(p_raw -> 'rtt_write'),
            lenient_bool(p_raw -> 'openable'),
            lenient_bool(p_raw -> 'readable'),
            lenient_bool(p_raw -> 'writable'),
            lenient_object(p_raw -> 'dns'),
            lenient_object(p_raw -> 'tls'),
            lenient_object(p_raw -> 'http'),
            lenient_object(p_raw -> 'geo')
        )
        ON CONFLICT (id) DO NOTHING;

        PERFORM 1 FROM nip66 WHERE id = v_id FOR KEY SHARE;
        IF FOUND THEN
            RETURN v_id;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'insert_nip66: result % kept being deleted concurrently', encode(v_id, 'hex');
END
$$;

COMMENT ON FUNCTION insert_nip66(JSONB) IS
    'Content-addressed relay check result insert (id = sha256(raw::text)); returns the id';

-- ---------------------------------------------------------------------------
-- insert_relay_metadata(
--     p_relay_url          TEXT,    relay (normalized URL), created if unknown
--     p_relay_network      TEXT,    its network (NULL -> 'clearnet')
--     p_relay_inserted_at  BIGINT,  used only if the relay is new (NULL -> now)
--     p_generated_at       BIGINT,  unix seconds of the snapshot
--     p_nip11_raw          JSONB DEFAULT NULL,  NIP-11 document, NULL if none
--     p_nip66              JSONB DEFAULT NULL   check result, NULL if none
-- ) -> BOOLEAN
--   Deduplicates both documents by content (insert_nip11 / insert_nip66:
--   id = sha256 of the UTF-8 of the jsonb's canonical text) and records the
--   snapshot (relay_url, generated_at, nip11_id, nip66_id). A snapshot with
--   both documents NULL is recorded too ("checked, nothing obtained").
--   Returns true if the snapshot was new; an existing snapshot for the same
--   (relay, generated_at) is kept unchanged (first write wins).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION insert_relay_metadata(
    p_relay_url          TEXT,
    p_relay_network      TEXT,
    p_relay_inserted_at  BIGINT,
    p_generated_at       BIGINT,
    p_nip11_raw          JSONB DEFAULT NULL,
    p_nip66              JSONB DEFAULT NULL
)
RETURNS BOOLEAN
LANGUAGE plpgsql
AS $$
DECLARE
    v_nip11_id BYTEA;
    v_nip66_id BYTEA;
BEGIN
    INSERT INTO relays (url, network, inserted_at)
    VALUES (p_relay_url, coalesce(p_relay_network, 'clearnet'),
            coalesce(p_relay_inserted_at, now_epoch()))
    ON CONFLICT (url) DO NOTHING;

    v_nip11_id := insert_nip11(p_nip11_raw);
    v_nip66_id := insert_nip66(p_nip66);

    INSERT INTO relay_metadata (relay_url, generated_at, nip11_id, nip66_id)
    VALUES (p_relay_url, p_generated_at, v_nip11_id, v_nip66_id)
    ON CONFLICT (relay_url, generated_at) DO NOTHING;
    RETURN FOUND;
END
$$;

COMMENT ON FUNCTION insert_relay_metadata(TEXT, TEXT, BIGINT, BIGINT, JSONB, JSONB) IS
    'Records a monitoring snapshot with content-addressed NIP-11/NIP-66 dedupe; returns true if new';

-- ---------------------------------------------------------------------------
-- delete_orphan_events(p_batch INTEGER DEFAULT 10000) -> INTEGER
--   Deletes up to p_batch events that have no events_relays row and returns
--   how many it deleted; call repeatedly until it returns 0.
--   Candidates are found without locks; then events_relays is locked in
--   SHARE mode (waits for in-flight ingestion transactions, blocks new ones
--   until this transaction ends) and each candidate is re-checked, so a
--   sighting being committed concurrently never loses its event. Call it in
--   its own short transaction (autocommit): the lock lasts until commit.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION delete_orphan_events(p_batch INTEGER DEFAULT 10000)
RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_ids BYTEA[];
    v_deleted INTEGER;
BEGIN
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

    LOCK TABLE events_relays IN SHARE MODE;

    DELETE FROM events AS e
    WHERE e.id = ANY (v_ids)
      AND NOT EXISTS (SELECT 1 FROM events_relays AS er WHERE er.event_id = e.id);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;

COMMENT ON FUNCTION delete_orphan_events(INTEGER) IS
    'Deletes up to p_batch events without any events_relays row; returns rows deleted';

-- ---------------------------------------------------------------------------
-- delete_orphan_nip11(p_batch INTEGER DEFAULT 10000) -> INTEGER
-- delete_orphan_nip66(p_batch INTEGER DEFAULT 10000) -> INTEGER
--   Delete up to p_batch documents no relay_metadata row references; return
--   how many were deleted. Candidates are locked FOR UPDATE SKIP LOCKED
--   (documents an insert_nip11/66 caller holds are skipped) and re-checked
--   with a fresh snapshot before deletion.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION delete_orphan_nip11(p_batch INTEGER DEFAULT 10000)
RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_ids BYTEA[];
    v_deleted INTEGER;
BEGIN
    SELECT array_agg(c.id) INTO v_ids
    FROM (
        SELECT n.id
        FROM nip11 AS n
        WHERE NOT EXISTS (SELECT 1 FROM relay_metadata AS rm WHERE rm.nip11_id = n.id)
        LIMIT greatest(coalesce(p_batch, 10000), 0)
        FOR UPDATE OF n SKIP LOCKED
    ) AS c;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;

    DELETE FROM nip11 AS n
    WHERE n.id = ANY (v_ids)
      AND NOT EXISTS (SELECT 1 FROM relay_metadata AS rm WHERE rm.nip11_id = n.id);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;

COMMENT ON FUNCTION delete_orphan_nip11(INTEGER) IS
    'Deletes up to p_batch NIP-11 documents no snapshot references; returns rows deleted';

CREATE OR REPLACE FUNCTION delete_orphan_nip66(p_batch INTEGER DEFAULT 10000)
RETURNS INTEGER
LANGUAGE plpgsql
AS $$
DECLARE
    v_ids BYTEA[];
    v_deleted INTEGER;
BEGIN
    SELECT array_agg(c.id) INTO v_ids
    FROM (
        SELECT n.id
        FROM nip66 AS n
        WHERE NOT EXISTS (SELECT 1 FROM relay_metadata AS rm WHERE rm.nip66_id = n.id)
        LIMIT greatest(coalesce(p_batch, 10000), 0)
        FOR UPDATE OF n SKIP LOCKED
    ) AS c;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;

    DELETE FROM nip66 AS n
    WHERE n.id = ANY (v_ids)
      AND NOT EXISTS (SELECT 1 FROM relay_metadata AS rm WHERE rm.nip66_id = n.id);
    GET DIAGNOSTICS v_deleted = ROW_COUNT;
    RETURN v_deleted;
END
$$;

COMMENT ON FUNCTION delete_orphan_nip66(INTEGER) IS
    'Deletes up to p_batch check results no snapshot references; returns rows deleted';
