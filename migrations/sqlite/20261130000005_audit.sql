-- The audit trail. `order_steps`: one row per external call a provisioning job made (the
-- Order read, AddOrder, AcceptOrder, GetOrders, the write-back), pruned after
-- AUDIT_RETENTION_DAYS. `operator_actions`: one row per operator command that changed
-- something in bulk (e.g. `orders redrive`). Times are epoch milliseconds on the database's
-- clock. Error texts are the clients' (already redacted); request bodies are never stored.
CREATE TABLE order_steps (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    sf_order_id     TEXT NOT NULL,
    -- the queue job (its EventUuid, or `op-…` / `reconcile:…` for operator and reconciler jobs)
    job_id          TEXT,
    -- the ledger attempt the step belongs to; NULL before the attempt opened (the Order read)
    attempt_id      BIGINT,
    -- read_order | add_order | accept_order | get_orders | whmcs_details | write_back
    step            TEXT NOT NULL,
    started_at      BIGINT NOT NULL,
    duration_ms     BIGINT NOT NULL,
    -- ok | transient | permanent | config
    outcome         TEXT NOT NULL,
    error_code      TEXT,
    error_message   TEXT,
    whmcs_client_id TEXT,
    whmcs_order_id  BIGINT
);
CREATE INDEX order_steps_order_idx ON order_steps (sf_order_id, started_at);
CREATE INDEX order_steps_started_idx ON order_steps (started_at);

CREATE TABLE operator_actions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    -- e.g. redrive
    action      TEXT NOT NULL,
    operator    TEXT NOT NULL,
    -- the command's filter, as JSON
    filter      TEXT NOT NULL,
    count       BIGINT NOT NULL,
    -- per-Order results, as JSON
    detail      TEXT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX operator_actions_created_idx ON operator_actions (created_at);
