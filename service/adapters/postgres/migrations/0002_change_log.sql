-- Change log for WatchEntitlements and cache invalidation: one row per committed change.
-- Stream positions are transaction ids (xid8): a reader only takes rows of transactions below
-- the oldest one still running (the snapshot's xmin), so nothing can commit behind it later,
-- and writers never serialise on a global lock.

CREATE TABLE change_log (
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    version     bigint NOT NULL,
    subject     text NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (txid, version)
);
CREATE INDEX change_log_by_time ON change_log (changed_at);

CREATE TABLE change_log_state (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),
    pruned_below  xid8 NOT NULL DEFAULT '0'
);
INSERT INTO change_log_state DEFAULT VALUES;
