-- Plan state: subjects, their subscription items, every delivery, and plan changes.

CREATE SEQUENCE entitlement_version_seq;

CREATE TABLE subjects (
    subject        text PRIMARY KEY,
    version        bigint NOT NULL DEFAULT 0,
    plan           text,
    created_at_ms  bigint,
    deleted_at_ms  bigint,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE items (
    item_id          text PRIMARY KEY,
    subject          text NOT NULL REFERENCES subjects (subject),
    status           text NOT NULL,
    plan_slug        text,
    plan_id          text,
    period_end_ms    bigint,
    past_due_at_ms   bigint,
    is_default       boolean NOT NULL DEFAULT false,
    ever_active      boolean NOT NULL DEFAULT false,
    event_ms         bigint NOT NULL,
    lifecycle_rank   smallint NOT NULL,
    digest           text NOT NULL,
    source_event_id  text NOT NULL,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX items_by_subject ON items (subject);

CREATE TABLE deliveries (
    event_id     text PRIMARY KEY,
    type         text NOT NULL,
    payload      bytea NOT NULL,
    subject      text,
    outcome      text NOT NULL,
    notes        text[] NOT NULL DEFAULT '{}',
    event_ms     bigint,
    received_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deliveries_by_subject ON deliveries (subject, recorded_at DESC);

CREATE TABLE plan_changes (
    id              bigserial PRIMARY KEY,
    subject         text NOT NULL,
    from_plan       text NOT NULL,
    to_plan         text NOT NULL,
    version         bigint NOT NULL,
    cause_event_id  text,
    cause_type      text,
    changed_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX plan_changes_by_subject ON plan_changes (subject, changed_at DESC);
