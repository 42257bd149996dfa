-- 007_readonly_role.sql
--
-- bigbrotr_reader: the role the HTTP API connects as. It can read every
-- table and view of the archive and write nothing, so a bug in the API
-- cannot change the archive.
--
-- It logs in without a password: the embedded cluster authenticates local
-- connections by trust. On a server with password authentication, give it a
-- password (ALTER ROLE bigbrotr_reader PASSWORD '...') and set
-- http.readonly_database_url.
--
-- Roles are cluster-wide while grants are per database, so several archives
-- on one server share the role. The handlers cover two databases migrated at
-- the same moment (both see no role; the second CREATE ROLE fails) and an
-- archive owner without CREATEROLE (then the API needs its own
-- http.readonly_database_url; the engine itself does not need this role).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bigbrotr_reader') THEN
        BEGIN
            CREATE ROLE bigbrotr_reader LOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;
            -- Another database on this server migrating at the same moment updated the
            -- same catalog row ("tuple concurrently updated"): the role exists either way.
            WHEN internal_error THEN
                NULL;
            WHEN insufficient_privilege THEN
                RAISE WARNING 'cannot create role bigbrotr_reader (%): set http.readonly_database_url for the HTTP API', SQLERRM;
                RETURN;
        END;
    END IF;

    -- A second guard besides the grants: the role's transactions start
    -- read-only (the API never asks otherwise).
    BEGIN
        ALTER ROLE bigbrotr_reader SET default_transaction_read_only = on;
        COMMENT ON ROLE bigbrotr_reader IS 'Read-only role of the bigbrotr HTTP API';
    EXCEPTION
        WHEN insufficient_privilege THEN
            RAISE WARNING 'cannot configure role bigbrotr_reader: %', SQLERRM;
        -- A concurrent migration of another database set the same role settings.
        WHEN internal_error THEN
            NULL;
    END;

    GRANT USAGE ON SCHEMA public TO bigbrotr_reader;
    GRANT SELECT ON ALL TABLES IN SCHEMA public TO bigbrotr_reader;
    -- Tables and views that later migrations create are readable too.
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO bigbrotr_reader;
END
$$;
