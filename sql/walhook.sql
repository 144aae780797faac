-- The walhook schema, every migration in order. Generated from sql/migrations/;
-- run it as a role that may create schemas (e.g. the database owner), then grant the
-- role walhook runs as USAGE on schema walhook, SELECT, INSERT, UPDATE, DELETE on its
-- tables and USAGE on its sequences. walhook applies the same migrations itself when
-- its role may (it owns the schema, or may create it).
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

-- 0002 parked
DO $walhook$ BEGIN
IF NOT EXISTS (SELECT 1 FROM walhook.schema_migrations WHERE version = 2) THEN
-- Parked and dead events: what a failing target could not take, kept here so the slot can
-- move on. One row per event and trigger; a row is deleted once its target answers 2xx.
CREATE TABLE walhook.parked (
    -- insertion order: the events of one ordering key are delivered by increasing id
    id bigserial PRIMARY KEY,
    -- the trigger's name in the config file
    trigger text NOT NULL,
    -- the event's id (its webhook-id when sent alone)
    event_id text NOT NULL,
    -- the ordering key (a hash of the table and the row's key, or of the table): events with
    -- the same key are delivered in order, and while a key has pending rows its later events
    -- are parked behind them
    order_key bigint NOT NULL,
    -- the exact request body
    body bytea NOT NULL,
    -- the event's own request headers (the trigger's configured headers and the signature
    -- are added when it is sent, so a rotated token or secret applies to parked events too)
    headers jsonb NOT NULL DEFAULT '{}',
    -- pending: retried by the running daemon; dead: kept, no longer retried (walhook replay)
    state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    first_failure timestamptz NOT NULL DEFAULT now(),
    last_error text,
    -- when it was last sent from this table (null: not yet)
    last_attempt_at timestamptz,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    parked_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (trigger, event_id)
);
CREATE INDEX parked_pending ON walhook.parked (trigger, id) WHERE state = 'pending';
INSERT INTO walhook.schema_migrations (version, name) VALUES (2, 'parked');
END IF;
END $walhook$;

-- 0003 parked_requests
DO $walhook$ BEGIN
IF NOT EXISTS (SELECT 1 FROM walhook.schema_migrations WHERE version = 3) THEN
-- The request of a parked event, where it is not the trigger's fixed one: its method (from a
-- `method` map), its path and query (from a `url` template), and in `headers` the values of
-- templated headers. The scheme, host, port, fixed headers and signature still come from the
-- trigger's current config when the event is sent.
ALTER TABLE walhook.parked
    -- null: the trigger's method
    ADD COLUMN method text,
    -- the request target (/path?query); null: the trigger's URL
    ADD COLUMN target text,
    -- why no request can be made for it (a template or `body` failed); null: it can be sent.
    -- Such a row fails like a 4xx each time it is tried, until it goes dead.
    ADD COLUMN unsendable text;
INSERT INTO walhook.schema_migrations (version, name) VALUES (3, 'parked_requests');
END IF;
END $walhook$;
COMMIT;
