-- Operator pauses: one row per paused part (`intake`, `provisioning`), deleted on resume.
-- `paused_at` comes from the database's clock.
CREATE TABLE pauses (
    part      TEXT PRIMARY KEY,
    paused_at BIGINT NOT NULL,
    paused_by TEXT NOT NULL,
    reason    TEXT
);

-- Dead letters: every poison event with the evidence to replay it. The payload is kept as hex,
-- at most 64 KiB of it (`truncated` = 1 when the event was larger; such a row cannot be
-- replayed). Rows are kept: nothing deletes them.
CREATE TABLE poison_events (
    replay_id    TEXT PRIMARY KEY,
    channel      TEXT NOT NULL,
    event_id     TEXT,
    schema_id    TEXT,
    reason       TEXT NOT NULL,
    detail       TEXT,
    payload      TEXT NOT NULL,
    payload_size BIGINT NOT NULL,
    truncated    BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    replayed_at  BIGINT,
    sf_order_id  TEXT
);
CREATE INDEX poison_events_received_at ON poison_events (received_at);
