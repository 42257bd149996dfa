-- 003_indexes.sql
--
-- Secondary indexes, kept to the minimum: every index on events and
-- events_relays is paid for on every COPY. Primary keys already cover
-- lookups by event id, by (event_id, relay_url), by relay url, and the
-- newest snapshot of a relay (relay_metadata's (relay_url, generated_at)).

-- Author timelines: WHERE pubkey = ? ORDER BY created_at DESC.
CREATE INDEX events_pubkey_created_at_idx ON events (pubkey, created_at DESC);

-- Kind timelines: WHERE kind = ? ORDER BY created_at DESC.
CREATE INDEX events_kind_created_at_idx ON events (kind, created_at DESC);

-- Global timeline and time-window statistics.
CREATE INDEX events_created_at_idx ON events (created_at DESC);

-- What a relay served, newest first; per-relay counts.
CREATE INDEX events_relays_relay_url_seen_at_idx ON events_relays (relay_url, seen_at DESC);

-- Snapshots by time (monitoring dashboards, retention).
CREATE INDEX relay_metadata_generated_at_idx ON relay_metadata (generated_at);

-- relay_metadata is low-volume; these two keep the foreign-key checks made
-- when a nip11/nip66 row is deleted (delete_orphan_nip11/66) from scanning
-- the whole table once per deleted row.
CREATE INDEX relay_metadata_nip11_id_idx ON relay_metadata (nip11_id) WHERE nip11_id IS NOT NULL;
CREATE INDEX relay_metadata_nip66_id_idx ON relay_metadata (nip66_id) WHERE nip66_id IS NOT NULL;
