-- Native hash partitioning of the archive's big tables, for evaluation (issue 13): `events` by
-- `id`, `events_relays` and `event_tags` by `event_id`, 16 partitions each (BigBrotr 6.6's
-- layout; the one Citus shards map onto, see docs/SCALING.md). NOT a migration: the schema
-- stays unpartitioned; this script lets `bigbrotr bench --setup-sql scripts/partition-events.sql`
-- measure the same binary on both layouts.
--
-- Run it on a freshly migrated, EMPTY archive (`bigbrotr init`, or what `bigbrotr bench` just
-- migrated); it refuses anything else. It works from the catalog rather than a copy of the
-- DDL, so it keeps whatever the migrations created on the three tables: every column with its
-- default and comment, every constraint (CHECK ... NOT VALID stays NOT VALID), index and
-- trigger under its own name, the owner, the grants, the comments; the views that read the
-- tables are dropped and recreated with their definition, owner, grants and comments. No
-- foreign key points at these tables (events_relays has none by design); if a future
-- migration adds an object this script does not know about, `DROP TABLE` (without CASCADE)
-- fails and nothing changes.
--
--   psql "$URL" -v ON_ERROR_STOP=1 -f scripts/partition-events.sql

BEGIN;

LOCK TABLE events, events_relays, event_tags IN ACCESS EXCLUSIVE MODE;

DO $partition$
DECLARE
    parts  CONSTANT int := 16;
    tabs   CONSTANT text[] := ARRAY['events', 'events_relays', 'event_tags'];
    keys   CONSTANT text[] := ARRAY['id', 'event_id', 'event_id'];
    t      text;
    k      int;
    i      int;
    r      record;
    nonempty boolean;
BEGIN
    FOR k IN 1 .. array_length(tabs, 1) LOOP
        t := tabs[k];
        IF (SELECT c.relkind FROM pg_class AS c WHERE c.oid = t::regclass) <> 'r' THEN
            RAISE EXCEPTION 'partition-events: % is already partitioned (or not a plain table)', t;
        END IF;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I)', t) INTO nonempty;
        IF nonempty THEN
            RAISE EXCEPTION 'partition-events: % is not empty; run this on a freshly migrated archive', t;
        END IF;
    END LOOP;

    -- Views that read the tables, directly or through other views, deepest last.
    CREATE TEMP TABLE pe_views ON COMMIT DROP AS
    WITH RECURSIVE dep(oid, depth) AS (
        SELECT rw.ev_class, 1
        FROM pg_depend AS d
        JOIN pg_rewrite AS rw ON rw.oid = d.objid
        WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.refobjid = ANY (tabs::regclass[]) AND rw.ev_class <> d.refobjid
        UNION
        SELECT rw.ev_class, dep.depth + 1
        FROM dep
        JOIN pg_depend AS d ON d.refobjid = dep.oid AND d.classid = 'pg_rewrite'::regclass
                            AND d.refclassid = 'pg_class'::regclass
        JOIN pg_rewrite AS rw ON rw.oid = d.objid
        WHERE rw.ev_class <> dep.oid
    )
    SELECT c.oid, c.oid::regclass::text AS name, max(dep.depth) AS depth, c.relkind,
           pg_get_viewdef(c.oid) AS def, c.reloptions,
           pg_get_userbyid(c.relowner) AS owner, c.relacl,
           obj_description(c.oid, 'pg_class') AS comment
    FROM dep JOIN pg_class AS c ON c.oid = dep.oid
    GROUP BY c.oid;
    IF EXISTS (SELECT 1 FROM pe_views WHERE relkind <> 'v') THEN
        RAISE EXCEPTION 'partition-events: a materialized view reads the tables; not handled';
    END IF;
    CREATE TEMP TABLE pe_view_cols ON COMMIT DROP AS
    SELECT v.name, a.attname, col_description(v.oid, a.attnum) AS comment
    FROM pe_views AS v JOIN pg_attribute AS a ON a.attrelid = v.oid AND a.attnum > 0
    WHERE col_description(v.oid, a.attnum) IS NOT NULL;

    -- What a table carries besides its columns, as DDL to replay on the partitioned one.
    CREATE TEMP TABLE pe_ddl (tab text, ord int, sql text) ON COMMIT DROP;
    FOR k IN 1 .. array_length(tabs, 1) LOOP
        t := tabs[k];
        -- Constraints (primary key, unique, check, foreign keys from the table), then
        -- the indexes no constraint owns, then triggers.
        INSERT INTO pe_ddl
        SELECT t, 1, format('ALTER TABLE %I ADD CONSTRAINT %I %s', t, co.conname,
                            pg_get_constraintdef(co.oid))
        FROM pg_constraint AS co
        WHERE co.conrelid = t::regclass AND co.contype IN ('p', 'u', 'c', 'f', 'x');
        INSERT INTO pe_ddl
        SELECT t, 2, format('COMMENT ON CONSTRAINT %I ON %I IS %L', co.conname, t,
                            obj_description(co.oid, 'pg_constraint'))
        FROM pg_constraint AS co
        WHERE co.conrelid = t::regclass AND obj_description(co.oid, 'pg_constraint') IS NOT NULL;
        INSERT INTO pe_ddl
        SELECT t, 3, pg_get_indexdef(ix.indexrelid)
        FROM pg_index AS ix
        WHERE ix.indrelid = t::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_constraint AS co WHERE co.conindid = ix.indexrelid
                          AND co.conrelid = t::regclass);
        INSERT INTO pe_ddl
        SELECT t, 4, format('COMMENT ON INDEX %s IS %L', ix.indexrelid::regclass,
                            obj_description(ix.indexrelid, 'pg_class'))
        FROM pg_index AS ix
        WHERE ix.indrelid = t::regclass AND obj_description(ix.indexrelid, 'pg_class') IS NOT NULL;
        INSERT INTO pe_ddl
        SELECT t, 5, pg_get_triggerdef(tg.oid)
        FROM pg_trigger AS tg
        WHERE tg.tgrelid = t::regclass AND NOT tg.tgisinternal;
        INSERT INTO pe_ddl
        SELECT t, 6, format('ALTER TABLE %I OWNER TO %I', t, pg_get_userbyid(c.relowner))
        FROM pg_class AS c WHERE c.oid = t::regclass;
        INSERT INTO pe_ddl
        SELECT t, 7, format('GRANT %s ON %I TO %s', a.privilege_type, t,
                            CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                 ELSE quote_ident(pg_get_userbyid(a.grantee)) END)
        FROM pg_class AS c, aclexplode(c.relacl) AS a
        WHERE c.oid = t::regclass AND a.grantee <> c.relowner;
        INSERT INTO pe_ddl
        SELECT t, 8, format('COMMENT ON TABLE %I IS %L', t, obj_description(t::regclass, 'pg_class'))
        WHERE obj_description(t::regclass, 'pg_class') IS NOT NULL;
    END LOOP;

    FOR r IN SELECT name FROM pe_views ORDER BY depth DESC, oid DESC LOOP
        EXECUTE format('DROP VIEW %s', r.name);
    END LOOP;

    FOR k IN 1 .. array_length(tabs, 1) LOOP
        t := tabs[k];
        -- Columns with their defaults, storage, compression and comments; the rest is replayed.
        EXECUTE format(
            'CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY '
            'INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING COMMENTS) PARTITION BY HASH (%I)',
            t || '_partitioned', t, keys[k]);
        EXECUTE format('DROP TABLE %I', t);
        EXECUTE format('ALTER TABLE %I RENAME TO %I', t || '_partitioned', t);
        FOR i IN 0 .. parts - 1 LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES WITH (MODULUS %s, REMAINDER %s)',
                           t || '_p' || lpad(i::text, 2, '0'), t, parts, i);
        END LOOP;
        FOR r IN SELECT sql FROM pe_ddl WHERE tab = t ORDER BY ord, sql LOOP
            EXECUTE r.sql;
        END LOOP;
    END LOOP;

    FOR r IN SELECT * FROM pe_views ORDER BY depth, oid LOOP
        EXECUTE format('CREATE VIEW %s%s AS %s', r.name,
                       CASE WHEN r.reloptions IS NULL THEN ''
                            ELSE format(' WITH (%s)', array_to_string(r.reloptions, ', ')) END,
                       r.def);
        EXECUTE format('ALTER VIEW %s OWNER TO %I', r.name, r.owner);
        IF r.comment IS NOT NULL THEN
            EXECUTE format('COMMENT ON VIEW %s IS %L', r.name, r.comment);
        END IF;
    END LOOP;
    FOR r IN
        SELECT v.name, a.privilege_type,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                    ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS grantee
        FROM pe_views AS v, aclexplode(v.relacl) AS a
        WHERE a.grantee <> (SELECT c.relowner FROM pg_class AS c WHERE c.oid = v.name::regclass)
    LOOP
        EXECUTE format('GRANT %s ON %s TO %s', r.privilege_type, r.name, r.grantee);
    END LOOP;
    FOR r IN SELECT * FROM pe_view_cols LOOP
        EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', r.name, r.attname, r.comment);
    END LOOP;

    IF (SELECT count(*) FROM pg_inherits WHERE inhparent = ANY (tabs::regclass[]))
       <> parts * array_length(tabs, 1) THEN
        RAISE EXCEPTION 'partition-events: partitions missing';
    END IF;
    RAISE NOTICE 'partition-events: events, events_relays, event_tags hash-partitioned % ways; % views recreated',
        parts, (SELECT count(*) FROM pe_views);
END
$partition$;

COMMIT;
