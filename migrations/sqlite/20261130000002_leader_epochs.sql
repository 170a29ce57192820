-- Fencing tokens of the subscriber leadership, allocated in the ledger (monotonic here, so a
-- Redis that lost its data cannot hand out a token older than the cursor's).
CREATE TABLE leader_epochs (
    name  TEXT PRIMARY KEY,
    epoch BIGINT NOT NULL
);
