-- The walhook schema, every migration in order. Generated from sql/migrations/;
-- run it as a role that may create schemas (e.g. the database owner), then grant the
-- role walhook runs as USAGE on schema walhook and SELECT, INSERT, UPDATE, DELETE on
-- its tables. walhook applies the same migrations itself when its role may.
BEGIN;
CREATE SCHEMA IF NOT EXISTS walhook;
CREATE TABLE IF NOT EXISTS walhook.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
COMMIT;
