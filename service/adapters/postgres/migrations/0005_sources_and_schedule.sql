-- Where a stored delivery came from: a Svix webhook, or a synthetic event written by
-- reconciliation with Clerk's Backend API (its payload is the API snapshot it was built from).
ALTER TABLE deliveries ADD COLUMN source text NOT NULL DEFAULT 'webhook';
-- The fallback event time (svix-timestamp) a delivery was applied with, so a replay
-- normalises it exactly as the first time.
ALTER TABLE deliveries ADD COLUMN signed_at_ms bigint;
CREATE INDEX deliveries_unparseable ON deliveries (recorded_at) WHERE outcome = 'UNPARSEABLE';

-- The reconciliation schedule, shared by every replica: whoever moves `next_run_at` forward
-- runs the pass, so replicas never reconcile twice at once.
CREATE TABLE reconcile_schedule (
    id           boolean PRIMARY KEY DEFAULT true CHECK (id),
    next_run_at  timestamptz NOT NULL DEFAULT now(),
    last_run_by  text
);
INSERT INTO reconcile_schedule DEFAULT VALUES;
