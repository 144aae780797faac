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

-- 0001 slot_state
DO $walhook$ BEGIN
IF NOT EXISTS (SELECT 1 FROM walhook.schema_migrations WHERE version = 1) THEN
-- The slot walhook streams from, so a slot dropped or invalidated under walhook is noticed
-- rather than silently created again: one row per slot walhook created or adopted.
CREATE TABLE walhook.slot_state (
    slot_name text PRIMARY KEY,
    -- the database the slot belongs to
    database text NOT NULL,
    -- where the slot started when walhook created or adopted it
    created_lsn pg_lsn NOT NULL,
    -- a position the slot had confirmed (kept at most a few seconds behind); changes
    -- committed after it are at risk if the slot is lost
    confirmed_lsn pg_lsn NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO walhook.schema_migrations (version, name) VALUES (1, 'slot_state');
END IF;
END $walhook$;
COMMIT;
