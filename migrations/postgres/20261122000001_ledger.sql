-- The provisioning ledger: one row per Salesforce Order (its state machine), the attempt
-- history, the event inbox (dedupe by EventUuid) and the subscription cursor.
-- Portable between SQLite and PostgreSQL: TEXT, BIGINT (epoch milliseconds), no booleans.

CREATE TABLE orders (
    sf_order_id       TEXT PRIMARY KEY,
    -- new | adding | whmcs_added | whmcs_accepted | done | failed
    state             TEXT NOT NULL,
    -- Provisioned | Failed once written back to Salesforce, else NULL
    outcome           TEXT,
    account_id        TEXT,
    whmcs_client_id   TEXT,
    whmcs_order_id    BIGINT,
    whmcs_service_ids TEXT,
    error_code        TEXT,
    error_message     TEXT,
    sf_status         TEXT,
    last_event_id     TEXT,
    correlation_id    TEXT,
    lease_owner       TEXT,
    lease_until       BIGINT,
    attempts          BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX orders_state_idx ON orders (state, updated_at);

CREATE TABLE attempts (
    id            BIGSERIAL PRIMARY KEY,
    sf_order_id   TEXT NOT NULL,
    event_id      TEXT,
    started_at    BIGINT NOT NULL,
    finished_at   BIGINT,
    outcome       TEXT,
    error_code    TEXT,
    error_message TEXT
);
CREATE INDEX attempts_order_idx ON attempts (sf_order_id, id);

CREATE TABLE event_inbox (
    event_id    TEXT PRIMARY KEY,
    replay_id   TEXT NOT NULL,
    sf_order_id TEXT,
    -- enqueued | poison
    status      TEXT NOT NULL,
    received_at BIGINT NOT NULL
);

CREATE TABLE cursors (
    channel       TEXT PRIMARY KEY,
    replay_id     TEXT NOT NULL,
    fencing_token BIGINT NOT NULL DEFAULT 0,
    updated_at    BIGINT NOT NULL
);
