-- gen-archive.sql: fills a migrated bigbrotr database with a synthetic archive, fast, in SQL.
--
-- For timing the statistics views (BENCHMARKS.md, "Analytics on 5M events"); the events are
-- NOT signed (ids and signatures are random-looking bytes), so never run it on a real archive.
-- Run it outside a transaction (each chunk commits on its own, as the engine's sink does):
--
--   psql "$(bigbrotr db url)" -v events=5000000 -f scripts/gen-archive.sql
--
-- Variables (psql -v name=value), all optional:
--   events   events to add                         (default 5000000)
--   relays   relays in the registry                (default 5000)
--   authors  distinct authors                      (default 200000)
--   chunk    events per transaction                (default 100000)
--   days     created_at spread back from now       (default 730)
--   checks   monitoring snapshots per relay        (default 24)
--   seed     anything; another seed, other events  (default 1)
--
-- Shapes, roughly as on the network: a few authors write most events (author = authors *
-- u^2), recent events dominate (age = days * u^2, so ~10 % fall in the last 7 days of a
-- 2-year spread), kind 1 and 7 make up most of the traffic with a long tail of rarer kinds,
-- every author publishes to 5 "home" relays drawn towards the popular ones (relay =
-- relays * u^3), and each event is seen on 1 to 3 of them. Re-running with the same seed
-- adds nothing (ids repeat, inserts are idempotent); another seed adds more events. Tags as
-- the network's: half the events have a `p`, replies/reactions/zaps an `e`, some notes a `t`;
-- with migration 013 applied, event_tags is filled for them (the archive then answers tag
-- filters as if the engine had written it).

\set ON_ERROR_STOP on
\if :{?events}
\else
  \set events 5000000
\endif
\if :{?relays}
\else
  \set relays 5000
\endif
\if :{?authors}
\else
  \set authors 200000
\endif
\if :{?chunk}
\else
  \set chunk 100000
\endif
\if :{?days}
\else
  \set days 730
\endif
\if :{?checks}
\else
  \set checks 24
\endif
\if :{?seed}
\else
  \set seed 1
\endif

SELECT set_config('gen.events', :'events', false),
       set_config('gen.relays', :'relays', false),
       set_config('gen.authors', :'authors', false),
       set_config('gen.chunk', :'chunk', false),
       set_config('gen.days', :'days', false),
       set_config('gen.checks', :'checks', false),
       set_config('gen.seed', :'seed', false) \gset

\timing on

-- The registry: relay-<n>; one in twenty an onion.
INSERT INTO relays (url, network, inserted_at)
SELECT CASE WHEN n % 20 = 19
            THEN 'ws://' || left(encode(sha256(('onion' || n)::bytea), 'hex'), 56) || '.onion'
            ELSE 'wss://relay-' || n || '.example.net' END,
       CASE WHEN n % 20 = 19 THEN 'tor' ELSE 'clearnet' END,
       now_epoch() - n * 60
FROM generate_series(0, current_setting('gen.relays')::int - 1) AS n
ON CONFLICT (url) DO NOTHING;

-- The events, one transaction per chunk.
DO $$
DECLARE
    v_events  BIGINT := current_setting('gen.events')::BIGINT;
    v_chunk   BIGINT := greatest(current_setting('gen.chunk')::BIGINT, 1);
    v_relays  INT    := current_setting('gen.relays')::INT;
    v_authors INT    := current_setting('gen.authors')::INT;
    v_span    BIGINT := current_setting('gen.days')::BIGINT * 86400;
    v_salt    BYTEA  := convert_to('bigbrotr-gen-' || current_setting('gen.seed'), 'UTF8');
    v_now     BIGINT := now_epoch();
    v_lo      BIGINT := 0;
    v_urls    TEXT[];
    v_kinds   INT[]  := ARRAY[
        -- 100 slots: the share of each kind in percent.
        1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1, 1,1,1,1,1,1,1,1,1,1, 1,1,1,1,
        7,7,7,7,7,7,7,7,7,7, 7,7,7,7,7,7,7,7,7,7, 7,7,7,7,7,
        6,6,6,6,6, 9735,9735,9735,9735,9735, 0,0,0, 3,3,3, 10002,10002,10002, 4,4,4,
        30023,30023, 30000,30000, 5,5, 1111,1111, 30078,30078, 1984, 16, 9734, 10000,
        1063, 20001, -1, -2, -3];
    t0        TIMESTAMPTZ;
BEGIN
    SELECT array_agg(url ORDER BY n) INTO v_urls
    FROM (SELECT url, row_number() OVER (ORDER BY inserted_at DESC, url) - 1 AS n
          FROM relays WHERE url LIKE 'wss://relay-%.example.net' OR url LIKE 'ws://%.onion') AS r;
    v_relays := least(v_relays, coalesce(cardinality(v_urls), 0));
    IF v_relays = 0 THEN
        RAISE EXCEPTION 'no relays to attribute sightings to';
    END IF;
    PERFORM setseed(0.5);
    WHILE v_lo < v_events LOOP
        t0 := clock_timestamp();
        WITH c AS MATERIALIZED (
            SELECT i,
                   sha256(v_salt || int8send(i)) AS id,
                   a AS author,
                   v_now - floor(v_span * r1 * r1)::BIGINT AS created_at,
                   CASE k
                       -- The negative slots: a rare kind from the long tail (1000-9999,
                       -- 40000-40999) or an ephemeral one.
                       WHEN -1 THEN 1000 + floor(r2 * 9000)::INT
                       WHEN -2 THEN 40000 + floor(r2 * 1000)::INT
                       WHEN -3 THEN 20000 + floor(r2 * 10000)::INT
                       ELSE k
                   END AS kind,
                   1 + floor(r3 * 3)::INT AS nsight,
                   r2, r3, r4, r5
            FROM (
                SELECT i,
                       floor(v_authors * power(random(), 2))::BIGINT AS a,
                       random() AS r1, random() AS r2, random() AS r3,
                       random() AS r4, random() AS r5,
                       v_kinds[1 + floor(random() * 100)::INT] AS k
                FROM generate_series(v_lo, least(v_lo + v_chunk, v_events) - 1) AS i
            ) AS raw
        ), ins AS (
            INSERT INTO events (id, pubkey, created_at, kind, tags, content, sig)
            SELECT c.id,
                   sha256(convert_to('author', 'UTF8') || int8send(c.author)),
                   c.created_at,
                   c.kind,
                   -- e: replies, reactions, zaps and comments point at an earlier event
                   -- (drawn towards the oldest, so a few are referenced very often); p: half
                   -- the events mention an author (drawn towards the prolific ones); t: one
                   -- note in seven carries a hashtag from a 2000-word vocabulary.
                   (CASE WHEN c.kind IN (7, 9735, 1111) OR (c.kind = 1 AND c.r4 < 0.4)
                         THEN jsonb_build_array(jsonb_build_array('e',
                                  encode(sha256(v_salt || int8send(floor(c.i * c.r5 * c.r5)::BIGINT)), 'hex'),
                                  '', 'reply'))
                         ELSE '[]'::JSONB END)
                   || (CASE WHEN c.r2 < 0.5 THEN '[]'::JSONB
                            ELSE jsonb_build_array(jsonb_build_array('p',
                                     encode(sha256(convert_to('author', 'UTF8') || int8send(
                                         floor(v_authors * power(c.r5, 2))::BIGINT)), 'hex')))
                       END)
                   || (CASE WHEN c.kind = 1 AND c.r4 > 6.0 / 7
                            THEN jsonb_build_array(jsonb_build_array('t',
                                     'topic' || floor(2000 * power(c.r3, 3))::INT))
                            ELSE '[]'::JSONB END),
                   repeat(md5(c.id::TEXT), 1 + (c.i % 4)::INT),
                   sha256(c.id) || sha256(sha256(c.id))
            FROM c
            ON CONFLICT (id) DO NOTHING
        )
        INSERT INTO events_relays (event_id, relay_url, seen_at, created_at)
        SELECT c.id,
               -- The author's j-th home relay (j < 5), drawn towards the popular ones.
               v_urls[1 + floor(v_relays * power(
                   ((hashint8(c.author * 8 + floor(random() * 5)::BIGINT)::BIGINT & 2147483647)
                    / 2147483648.0), 3))::INT],
               c.created_at + floor(random() * 600)::BIGINT,
               c.created_at
        FROM c
        CROSS JOIN generate_series(1, 3) AS s (k)
        WHERE s.k <= c.nsight
        ON CONFLICT (event_id, relay_url) DO NOTHING;
        COMMIT;
        v_lo := least(v_lo + v_chunk, v_events);
        RAISE NOTICE '% / % events (% s for this chunk)', v_lo, v_events,
            round(extract(epoch FROM clock_timestamp() - t0)::NUMERIC, 1);
    END LOOP;
END
$$;

-- The tag index (migration 013), one transaction per chunk of events in id order. Rows
-- already there are kept, so re-running adds only the new events' tags.
DO $$
DECLARE
    v_chunk  BIGINT := greatest(current_setting('gen.chunk')::BIGINT, 1);
    v_after  BYTEA  := '\x'::BYTEA;
    v_last   BYTEA;
BEGIN
    IF to_regclass('event_tags') IS NULL THEN
        RETURN;
    END IF;
    LOOP
        WITH b AS MATERIALIZED (
            SELECT id, created_at, kind, tags FROM events
            WHERE id > v_after AND raw_canonical IS NULL ORDER BY id LIMIT v_chunk
        ), ins AS (
            INSERT INTO event_tags (tag, created_at, event_id, kind)
            SELECT k, b.created_at, b.id, b.kind FROM b, event_tag_keys(b.tags) AS k
            ON CONFLICT DO NOTHING
        )
        SELECT id INTO v_last FROM b ORDER BY id DESC LIMIT 1;
        EXIT WHEN v_last IS NULL;
        v_after := v_last;
        COMMIT;
    END LOOP;
END
$$;

-- Monitoring: one NIP-11 document per relay, `checks` hourly snapshots each with its own
-- check result (distinct RTTs, so distinct documents).
INSERT INTO nip11 (id, raw, name, software, supported_nips)
SELECT sha256_utf8(d.raw::TEXT), d.raw, d.raw ->> 'name', d.raw ->> 'software', ARRAY[1, 11, 42]
FROM (
    SELECT jsonb_build_object('name', 'relay ' || r.url, 'software', 'gen',
                              'supported_nips', jsonb_build_array(1, 11, 42)) AS raw
    FROM relays AS r
) AS d
ON CONFLICT (id) DO NOTHING;

INSERT INTO nip66 (id, raw, rtt_open, rtt_read, rtt_write, openable, readable, writable)
SELECT sha256_utf8(d.raw::TEXT), d.raw, (d.raw ->> 'rtt_open')::INT, (d.raw ->> 'rtt_read')::INT,
       NULL, TRUE, TRUE, NULL
FROM (
    SELECT jsonb_build_object('rtt_open', 50 + floor(random() * 900)::INT,
                              'rtt_read', 20 + floor(random() * 400)::INT,
                              'openable', TRUE, 'readable', TRUE,
                              'relay', r.url, 'check', h) AS raw
    FROM relays AS r
    CROSS JOIN generate_series(1, current_setting('gen.checks')::INT) AS h
) AS d
ON CONFLICT (id) DO NOTHING;

INSERT INTO relay_metadata (relay_url, generated_at, nip11_id, nip66_id)
SELECT n.raw ->> 'relay',
       (now_epoch() / 3600) * 3600 - (n.raw ->> 'check')::BIGINT * 3600,
       sha256_utf8(jsonb_build_object('name', 'relay ' || (n.raw ->> 'relay'), 'software', 'gen',
                                      'supported_nips', jsonb_build_array(1, 11, 42))::TEXT),
       n.id
FROM nip66 AS n
WHERE n.raw ? 'check' AND n.raw ? 'relay'
ON CONFLICT (relay_url, generated_at) DO NOTHING;

ANALYZE;

SELECT (SELECT count(*) FROM events) AS events,
       (SELECT count(*) FROM events_relays) AS sightings,
       (SELECT count(*) FROM relays) AS relays,
       (SELECT count(*) FROM relay_metadata) AS snapshots,
       pg_size_pretty(pg_database_size(current_database())) AS database_size;
