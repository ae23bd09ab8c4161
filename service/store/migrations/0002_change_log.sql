-- Change log for WatchEntitlements and cache invalidation: one row per committed change, in
-- commit order (versions are taken under a transaction-scoped advisory lock).

CREATE TABLE change_log (
    version     bigint PRIMARY KEY,
    subject     text NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX change_log_by_time ON change_log (changed_at);

CREATE TABLE change_log_state (
    id              boolean PRIMARY KEY DEFAULT true CHECK (id),
    pruned_through  bigint NOT NULL DEFAULT 0
);
INSERT INTO change_log_state DEFAULT VALUES;
