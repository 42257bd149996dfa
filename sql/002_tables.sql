-- 002_tables.sql
--
-- The archive's tables. Timestamps are unix seconds (BIGINT) throughout.
--
-- events and events_relays carry NO foreign keys: they are written by bulk
-- binary COPY, and the engine itself guarantees that an event and its
-- sighting are committed in the same transaction. Only the low-volume
-- monitoring tables (relay_metadata) use foreign keys.

-- ---------------------------------------------------------------------------
-- relays: every relay URL the archive knows of (normalized by the engine).
-- ---------------------------------------------------------------------------
CREATE TABLE relays (
    url          TEXT    PRIMARY KEY,
    network      TEXT    NOT NULL DEFAULT 'clearnet'
                 CHECK (network IN ('clearnet', 'tor', 'i2p', 'loki', 'local')),
    inserted_at  BIGINT  NOT NULL
);

COMMENT ON TABLE relays IS 'Registry of known relay URLs (normalized) with their network';
COMMENT ON COLUMN relays.network IS 'clearnet, tor (.onion), i2p, loki, or local (loopback/private)';
COMMENT ON COLUMN relays.inserted_at IS 'Unix seconds when the relay was first recorded';

-- ---------------------------------------------------------------------------
-- events: one row per distinct Nostr event (NIP-01), ids/keys/sigs as bytes.
-- ---------------------------------------------------------------------------
CREATE TABLE events (
    id             BYTEA    PRIMARY KEY,
    pubkey         BYTEA    NOT NULL,
    created_at     BIGINT   NOT NULL,
    kind           INTEGER  NOT NULL,
    tags           JSONB    NOT NULL,
    content        TEXT     NOT NULL,
    sig            BYTEA    NOT NULL,
    raw_canonical  TEXT     NULL,
    CONSTRAINT events_id_len     CHECK (octet_length(id) = 32),
    CONSTRAINT events_pubkey_len CHECK (octet_length(pubkey) = 32),
    CONSTRAINT events_sig_len    CHECK (octet_length(sig) = 64),
    -- Evaluated only for the rare rows that carry raw_canonical.
    CONSTRAINT events_raw_canonical_hash
        CHECK (raw_canonical IS NULL OR sha256_utf8(raw_canonical) = id)
);

COMMENT ON TABLE events IS 'Distinct Nostr events; provenance lives in events_relays';
COMMENT ON COLUMN events.id IS 'sha256 of the NIP-01 canonical serialization (32 bytes)';
COMMENT ON COLUMN events.pubkey IS 'x-only secp256k1 public key of the author (32 bytes)';
COMMENT ON COLUMN events.sig IS 'BIP-340 schnorr signature of id (64 bytes)';
-- raw_canonical: PostgreSQL text and jsonb cannot hold U+0000. For an event
-- whose content or tags contain U+0000, raw_canonical holds the exact NIP-01
-- canonical serialization [0,"<pubkey hex>",created_at,kind,tags,content]
-- (in which U+0000 is written as the JSON escape \u0000, so it fits in text),
-- and content/tags hold a copy with every U+0000 replaced by U+FFFD. Then
-- sha256(UTF-8 of raw_canonical) = id, which the CHECK above enforces. For
-- every other event raw_canonical is NULL and content/tags are exact.
COMMENT ON COLUMN events.raw_canonical IS
    'Exact NIP-01 canonical serialization, only for events whose content or tags contain U+0000 '
    '(content/tags then hold a copy with U+0000 replaced by U+FFFD); sha256(raw_canonical) = id';

-- ---------------------------------------------------------------------------
-- events_relays: provenance, one row per (event, relay) sighting.
-- The first sighting wins (inserts use ON CONFLICT DO NOTHING).
-- ---------------------------------------------------------------------------
CREATE TABLE events_relays (
    event_id   BYTEA   NOT NULL,
    relay_url  TEXT    NOT NULL,
    seen_at    BIGINT  NOT NULL,
    PRIMARY KEY (event_id, relay_url)
);

COMMENT ON TABLE events_relays IS
    'Event provenance: first time each relay was seen serving each event (no FKs, by design)';

-- ---------------------------------------------------------------------------
-- nip11: content-addressed NIP-11 relay information documents.
-- id = sha256 of the UTF-8 text of raw (the jsonb canonical text form), so
-- identical documents from many relays and many checks are stored once.
-- The parsed columns are read leniently from raw (wrong shapes -> NULL).
-- ---------------------------------------------------------------------------
CREATE TABLE nip11 (
    id                BYTEA      PRIMARY KEY CHECK (octet_length(id) = 32),
    raw               JSONB      NOT NULL,
    name              TEXT,
    description       TEXT,
    banner            TEXT,
    icon              TEXT,
    pubkey            TEXT,
    contact           TEXT,
    supported_nips    INTEGER[],
    software          TEXT,
    version           TEXT,
    privacy_policy    TEXT,
    terms_of_service  TEXT,
    limitation        JSONB,
    extra_fields      JSONB
);

COMMENT ON TABLE nip11 IS 'Deduplicated NIP-11 documents (content-addressed by sha256 of raw::text)';
COMMENT ON COLUMN nip11.pubkey IS 'Admin pubkey as published (hex text, not validated)';
COMMENT ON COLUMN nip11.extra_fields IS 'Top-level fields of raw other than the parsed columns';

-- ---------------------------------------------------------------------------
-- nip66: content-addressed relay check results (NIP-66 style).
-- ---------------------------------------------------------------------------
CREATE TABLE nip66 (
    id         BYTEA    PRIMARY KEY CHECK (octet_length(id) = 32),
    raw        JSONB    NOT NULL,
    rtt_open   INTEGER,
    rtt_read   INTEGER,
    rtt_write  INTEGER,
    openable   BOOLEAN,
    readable   BOOLEAN,
    writable   BOOLEAN,
    dns        JSONB,
    tls        JSONB,
    http       JSONB,
    geo        JSONB
);

COMMENT ON TABLE nip66 IS 'Deduplicated relay check results (content-addressed by sha256 of raw::text)';
COMMENT ON COLUMN nip66.rtt_open IS 'Milliseconds to open the WebSocket';
COMMENT ON COLUMN nip66.rtt_read IS 'Milliseconds for a REQ to be answered';
COMMENT ON COLUMN nip66.rtt_write IS 'Milliseconds for an EVENT to be acknowledged';

-- ---------------------------------------------------------------------------
-- relay_metadata: time series of monitoring snapshots.
-- ---------------------------------------------------------------------------
CREATE TABLE relay_metadata (
    relay_url     TEXT    NOT NULL REFERENCES relays (url),
    generated_at  BIGINT  NOT NULL,
    nip11_id      BYTEA   NULL REFERENCES nip11 (id),
    nip66_id      BYTEA   NULL REFERENCES nip66 (id),
    PRIMARY KEY (relay_url, generated_at)
);

COMMENT ON TABLE relay_metadata IS
    'One monitoring snapshot per (relay, time): which NIP-11 document and check result were seen';

-- ---------------------------------------------------------------------------
-- service_state: per-service persistent state (e.g. sync cursors with
-- service_name = 'synchronizer' and state_key = relay url).
-- ---------------------------------------------------------------------------
CREATE TABLE service_state (
    service_name  TEXT    NOT NULL,
    state_key     TEXT    NOT NULL DEFAULT '',
    payload       JSONB   NOT NULL,
    updated_at    BIGINT  NOT NULL,
    PRIMARY KEY (service_name, state_key)
);

COMMENT ON TABLE service_state IS
    'Per-service state; sync cursors: service_name = ''synchronizer'', state_key = relay url';
