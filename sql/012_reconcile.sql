-- =============================================================================
-- 012_reconcile.sql: what each relay holds, ordered by time, for NIP-77.
--
-- Reconciliation (NIP-77, negentropy) compares the (created_at, id) pairs a
-- relay holds with those the archive holds *for that relay* over a time
-- range. Those pairs come from events_relays; created_at lives in events, and
-- a join per sighting of a relay with millions of them is millions of random
-- reads. So each sighting carries its event's created_at (written by the sink
-- from the event it already holds), and one index gives a relay's pairs in
-- the order negentropy wants them: an index-only range scan, no join, no sort.
--
-- The cost is one index on events_relays (010 dropped the old per-relay index
-- to make sightings cheaper; this one pays for itself: a relay that holds
-- events already archived from other relays becomes a sighting row, not a
-- download, a parse and a verification). BENCHMARKS.md has the figures.
--
-- Sightings written before this migration get their created_at here, once.
-- A sighting inserted by other means without created_at (an operator's
-- INSERT) is simply invisible to reconciliation: the relay's copy is then
-- recorded again with created_at (see the ON CONFLICT … DO UPDATE in the
-- engine's sighting writer), never duplicated.
-- =============================================================================

ALTER TABLE events_relays ADD COLUMN IF NOT EXISTS created_at BIGINT;

COMMENT ON COLUMN events_relays.created_at IS
    'created_at of the event (copied from events, for per-relay range scans by reconciliation)';

UPDATE events_relays er
   SET created_at = e.created_at
  FROM events e
 WHERE e.id = er.event_id
   AND er.created_at IS NULL;

CREATE INDEX IF NOT EXISTS events_relays_relay_created_idx
    ON events_relays (relay_url, created_at, event_id);

-- insert_event (004) keeps its signature; it now records created_at too.
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

    INSERT INTO events_relays (event_id, relay_url, seen_at, created_at)
    VALUES (p_event_id, p_relay_url, coalesce(p_seen_at, now_epoch()), p_created_at)
    ON CONFLICT (event_id, relay_url) DO NOTHING;

    RETURN v_new;
END
$$;
