-- A retried call's answer is found by its idempotency key through the primary key
-- (subject, meter, idempotency_key). The order index also starts with (subject, meter), and on a
-- table without statistics yet the planner weighed both the same: it took the order index and
-- read every record of the subject to find one key, so a hot subject's Consume got slower with
-- each call (usage_records grows by one row per call). Made partial on a predicate no key
-- lookup states (`seq > 0`, true of every row: seq counts from 1), the order index serves only
-- the queries that say so (verify's replay and the roll-up), and the key lookup has one index.
DROP INDEX usage_records_in_order;
CREATE INDEX usage_records_in_order ON usage_records (subject, meter, seq) WHERE seq > 0;
