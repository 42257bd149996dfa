-- 001_extensions_and_utils.sql
--
-- Preconditions and small helper functions used by the later migrations.
--
-- No extension is needed: ids are hashed with the builtin sha256(bytea)
-- (PostgreSQL 11+), so neither pgcrypto nor btree_gin is installed.
--
-- Applied once, in a transaction, by the engine's migration runner
-- (engine/db.rs), which records it in schema_migrations.

-- The archive stores event content and tags as text/jsonb and hashes their
-- UTF-8 bytes; a database in any other encoding would store or hash something
-- other than what was signed.
DO $$
BEGIN
    IF current_setting('server_encoding') <> 'UTF8' THEN
        RAISE EXCEPTION 'bigbrotr needs a UTF8 database, this one is %',
            current_setting('server_encoding');
    END IF;
END
$$;

-- sha256 of the UTF-8 bytes of a text value.
-- (convert_to is only STABLE because it depends on the database encoding,
-- which is fixed for the life of a database and checked above.)
CREATE OR REPLACE FUNCTION sha256_utf8(p_text TEXT)
RETURNS BYTEA
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT sha256(convert_to(p_text, 'UTF8')) $$;

COMMENT ON FUNCTION sha256_utf8(TEXT) IS
    'sha256 of the UTF-8 bytes of a text value';

-- Current time as unix seconds.
CREATE OR REPLACE FUNCTION now_epoch()
RETURNS BIGINT
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT extract(epoch FROM now())::BIGINT $$;

COMMENT ON FUNCTION now_epoch() IS 'Current transaction time as unix seconds';

-- NIP-01 class of an event kind: 'regular', 'replaceable', 'ephemeral',
-- 'addressable', or 'other' for kinds outside every NIP-01 range
-- (45-999, 40000 and up, negative), which clients treat as regular.
CREATE OR REPLACE FUNCTION event_category(p_kind INTEGER)
RETURNS TEXT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN p_kind = 1 OR p_kind = 2
          OR (p_kind >= 4 AND p_kind < 45)
          OR (p_kind >= 1000 AND p_kind < 10000)   THEN 'regular'
        WHEN p_kind = 0 OR p_kind = 3
          OR (p_kind >= 10000 AND p_kind < 20000)  THEN 'replaceable'
        WHEN p_kind >= 20000 AND p_kind < 30000    THEN 'ephemeral'
        WHEN p_kind >= 30000 AND p_kind < 40000    THEN 'addressable'
        ELSE 'other'
    END
$$;

COMMENT ON FUNCTION event_category(INTEGER) IS
    'NIP-01 kind class: regular, replaceable, ephemeral, addressable or other';

-- ---------------------------------------------------------------------------
-- Lenient JSON accessors.
--
-- NIP-11 documents and check results come from the open network: numbers
-- arrive as strings, strings as numbers, arrays as objects. These accessors
-- never raise; a value of the wrong shape reads as NULL (the raw document is
-- always kept next to the parsed columns, so nothing is lost).
-- ---------------------------------------------------------------------------

-- An integral JSON number, or a string of decimal digits, that fits INTEGER.
CREATE OR REPLACE FUNCTION lenient_int(p JSONB)
RETURNS INTEGER
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN jsonb_typeof(p) = 'number' THEN (
            SELECT CASE
                WHEN n = trunc(n) AND n BETWEEN -2147483648 AND 2147483647
                THEN n::INTEGER
            END
            FROM (SELECT (p #>> '{}')::NUMERIC AS n) AS v)
        WHEN jsonb_typeof(p) = 'string'
         AND (p #>> '{}') ~ '^\s*[-+]?[0-9]{1,9}\s*$'
        THEN btrim(p #>> '{}')::INTEGER
    END
$$;

-- A JSON boolean, or the string "true"/"false" (any case).
CREATE OR REPLACE FUNCTION lenient_bool(p JSONB)
RETURNS BOOLEAN
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN jsonb_typeof(p) = 'boolean' THEN (p #>> '{}')::BOOLEAN
        WHEN jsonb_typeof(p) = 'string' AND lower(btrim(p #>> '{}')) IN ('true', 'false')
        THEN lower(btrim(p #>> '{}'))::BOOLEAN
    END
$$;

-- A JSON string as text; a number or boolean as its JSON text; else NULL.
CREATE OR REPLACE FUNCTION lenient_text(p JSONB)
RETURNS TEXT
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN jsonb_typeof(p) IN ('string', 'number', 'boolean') THEN p #>> '{}'
    END
$$;

-- A JSON object as is; anything else is NULL.
CREATE OR REPLACE FUNCTION lenient_object(p JSONB)
RETURNS JSONB
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN jsonb_typeof(p) = 'object' THEN p END $$;

-- The elements of a JSON array that lenient_int accepts, in order; elements
-- it rejects are skipped. NULL when p is not an array.
CREATE OR REPLACE FUNCTION lenient_int_array(p JSONB)
RETURNS INTEGER[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN jsonb_typeof(p) = 'array' THEN (
        SELECT coalesce(array_agg(v ORDER BY i), '{}'::INTEGER[])
        FROM jsonb_array_elements(p) WITH ORDINALITY AS e(elem, i)
        CROSS JOIN LATERAL lenient_int(e.elem) AS v
        WHERE v IS NOT NULL)
    END
$$;

COMMENT ON FUNCTION lenient_int(JSONB) IS
    'Integral JSON number or digit string fitting INTEGER, else NULL';
COMMENT ON FUNCTION lenient_bool(JSONB) IS
    'JSON boolean or "true"/"false" string, else NULL';
COMMENT ON FUNCTION lenient_text(JSONB) IS
    'JSON string (or number/boolean as text), else NULL';
COMMENT ON FUNCTION lenient_object(JSONB) IS
    'JSON object, else NULL';
COMMENT ON FUNCTION lenient_int_array(JSONB) IS
    'Integers of a JSON array (others skipped), NULL if not an array';
