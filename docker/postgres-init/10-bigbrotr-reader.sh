#!/bin/sh
# Runs when the postgres container initialises an empty volume: gives the HTTP API's read-only
# role a password, so it can log in over the network. bigbrotr's migration 007 finds the role
# and grants it SELECT on the archive, and nothing else. Safe to run again (it then only
# sets the password).
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v reader_password="${BIGBROTR_READER_PASSWORD:?set BIGBROTR_READER_PASSWORD}" <<'SQL'
SELECT format(
         CASE WHEN EXISTS (SELECT FROM pg_roles WHERE rolname = 'bigbrotr_reader')
              THEN 'ALTER ROLE bigbrotr_reader LOGIN PASSWORD %L'
              ELSE 'CREATE ROLE bigbrotr_reader LOGIN PASSWORD %L'
         END,
         :'reader_password')
\gexec
SQL
