-- The try-out schema for docker-compose.yml.
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    status text NOT NULL DEFAULT 'new',
    amount numeric(12, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- The old row in updates, for `when` conditions on old_record.
ALTER TABLE orders REPLICA IDENTITY FULL;
