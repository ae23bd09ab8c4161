-- Every set and remove of a per-customer override, appended in the same statement as the change
-- to `overrides` (service/adapters/postgres/overrides.py). `overrides` is what reads use;
-- `verify` rebuilds each of its rows from these events and reports a row that differs (an edit
-- made outside the service, a lost write), as it replays usage_records to each usage counter.
CREATE TABLE override_events (
    seq            bigserial PRIMARY KEY,
    override_id    text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('set', 'remove')),
    subject        text,
    feature        text,
    limit_name     text,
    enabled        boolean,
    limit_value    bigint,
    unlimited      boolean,
    reason         text NOT NULL,
    at_ms          bigint NOT NULL,
    expires_at_ms  bigint,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);

-- Overrides set before this migration: their set, and their removal, as events.
INSERT INTO override_events (override_id, kind, subject, feature, limit_name, enabled,
                             limit_value, unlimited, reason, at_ms, expires_at_ms)
SELECT override_id, 'set', subject, feature, limit_name, enabled, limit_value, unlimited,
       reason, created_at_ms, expires_at_ms
  FROM overrides ORDER BY created_at, override_id;
INSERT INTO override_events (override_id, kind, reason, at_ms)
SELECT override_id, 'remove', COALESCE(remove_reason, ''), removed_at_ms
  FROM overrides WHERE removed_at_ms IS NOT NULL ORDER BY removed_at_ms, override_id;
