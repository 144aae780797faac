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
