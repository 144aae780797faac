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
