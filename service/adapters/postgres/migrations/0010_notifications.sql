-- Outbound change notifications (SPEC §10.4), derived from the change log: one notifier per
-- database at a time (the row lock on notify_state) reads the change log from `position`,
-- resolves the changed subjects and queues one delivery per endpoint in the same transaction
-- that moves `position`, so a change is queued exactly once whatever crashes. Deliveries are
-- then sent at least once, oldest first per (endpoint, subject), under a lease.

CREATE TABLE notify_state (
    id        boolean PRIMARY KEY DEFAULT true CHECK (id),
    position  bigint  -- change-log position (a transaction id) read up to; NULL: not started
);
INSERT INTO notify_state DEFAULT VALUES;

CREATE TABLE notify_endpoints (
    url              text PRIMARY KEY,
    added_at         timestamptz NOT NULL DEFAULT now(),
    disabled_at      timestamptz,  -- it answered 410 Gone: nothing is sent (changes queue)
    disabled_reason  text
);

-- What each subject was last notified as: a state seen again is not sent twice, an older one
-- never after a newer one, and `valid_until` is when its answer changes by time alone.
CREATE TABLE notify_subjects (
    subject      text PRIMARY KEY,
    version      bigint NOT NULL,
    fingerprint  text NOT NULL,
    valid_until  timestamptz
);
CREATE INDEX notify_subjects_due ON notify_subjects (valid_until) WHERE valid_until IS NOT NULL;

CREATE TABLE notify_deliveries (
    id               bigserial PRIMARY KEY,
    endpoint         text NOT NULL REFERENCES notify_endpoints (url) ON DELETE CASCADE,
    message_id       text NOT NULL,  -- the webhook-id: one per change, the same on every retry
    subject          text NOT NULL,
    version          bigint NOT NULL,
    body             text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    pending_since    timestamptz NOT NULL DEFAULT now(),  -- reset by a resend; gives up from it
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_until      timestamptz,  -- a replica is sending it until then
    last_attempt_at  timestamptz,
    last_status      integer,  -- the HTTP status of the last attempt (NULL: no answer)
    last_error       text,
    done_at          timestamptz,
    UNIQUE (endpoint, message_id)
) WITH (fillfactor = 80);  -- room for the claim's lease update to stay on its page (HOT)
CREATE INDEX notify_deliveries_pending ON notify_deliveries (endpoint, subject, id)
    WHERE status = 'pending';
