-- Every WHMCS client an Order's AddOrder was attempted under. Reconciliation searches all of
-- them, so an order created under a client id the Account no longer shows is still found.
CREATE TABLE order_clients (
    sf_order_id     TEXT NOT NULL,
    whmcs_client_id TEXT NOT NULL,
    -- epoch milliseconds of the first attempt under this client id
    first_seen_at   BIGINT NOT NULL,
    PRIMARY KEY (sf_order_id, whmcs_client_id)
);
