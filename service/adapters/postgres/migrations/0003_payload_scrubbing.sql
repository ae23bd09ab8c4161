-- Personal data in stored payloads is scrubbed on user/organization deletion and after the
-- payload retention; `scrubbed_at` records when, so a payload is scrubbed once.
ALTER TABLE deliveries ADD COLUMN scrubbed_at timestamptz;
CREATE INDEX deliveries_unscrubbed_by_time ON deliveries (recorded_at) WHERE scrubbed_at IS NULL;
