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
