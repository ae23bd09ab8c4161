-- SPEC §10.1–10.3: an item's period start and free-trial flag (metered billing periods,
-- trials), per-customer overrides, and usage of metered limits.
ALTER TABLE items ADD COLUMN period_start_ms bigint;
ALTER TABLE items ADD COLUMN free_trial boolean NOT NULL DEFAULT false;

-- A feature granted or withheld, or a limit replaced, for one subject (until removed or
-- `expires_at_ms`).
CREATE TABLE overrides (
    override_id     text PRIMARY KEY,
    subject         text NOT NULL REFERENCES subjects (subject),
    feature         text,
    limit_name      text,
    enabled         boolean NOT NULL DEFAULT false,
    limit_value     bigint,
    unlimited       boolean NOT NULL DEFAULT false,
    reason          text NOT NULL,
    created_at_ms   bigint NOT NULL,
    expires_at_ms   bigint,
    removed_at_ms   bigint,
    remove_reason   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((feature IS NULL) <> (limit_name IS NULL))
);
CREATE INDEX overrides_by_subject ON overrides (subject) WHERE removed_at_ms IS NULL;

-- One counter per subject and metered limit: its current period and what was used in it.
-- The row is the lock every consumption of that subject and limit takes (exact under any
-- concurrency, on any number of replicas).
CREATE TABLE usage_counters (
    subject          text NOT NULL,
    meter            text NOT NULL,
    period_start_ms  bigint NOT NULL,
    period_end_ms    bigint,
    used             bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, meter)
);

-- Every recorded call with its idempotency key and the answer it got (a retry gets the same
-- answer, counted once), in order (`seq`): `verify` replays them through the domain's rules and
-- must arrive at each counter. `amount` is what the call did: consume (allowed) and commit add
-- it, report adds it (a delta), set makes it the total, reserve and release leave `used` as is.
CREATE TABLE usage_records (
    seq              bigserial NOT NULL,
    subject          text NOT NULL,
    meter            text NOT NULL,
    idempotency_key  text NOT NULL,
    kind             text NOT NULL,
    amount           bigint NOT NULL,
    allowed          boolean NOT NULL,
    used_after       bigint NOT NULL,
    remaining_after  bigint NOT NULL,
    unlimited        boolean NOT NULL,
    limit_value      bigint NOT NULL,
    period_start_ms  bigint NOT NULL,
    resets_at_ms     bigint,
    reservation_id   text,
    recorded_at_ms   bigint NOT NULL,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, meter, idempotency_key)
);
CREATE INDEX usage_records_in_order ON usage_records (subject, meter, seq);
CREATE INDEX usage_records_by_time ON usage_records (recorded_at);

-- Units held for work whose cost is known only after it ran: they count as used while held
-- and not expired.
CREATE TABLE usage_reservations (
    reservation_id   text PRIMARY KEY,
    subject          text NOT NULL,
    meter            text NOT NULL,
    amount           bigint NOT NULL CHECK (amount > 0),
    expires_at_ms    bigint NOT NULL,
    state            text NOT NULL DEFAULT 'held',
    committed_amount bigint,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_reservations_held ON usage_reservations (subject, meter)
    WHERE state = 'held';
