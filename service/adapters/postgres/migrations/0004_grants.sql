-- Manual grants (overrides): a plan for a subject until an expiry or a revocation.
CREATE TABLE grants (
    grant_id       text PRIMARY KEY,
    subject        text NOT NULL REFERENCES subjects (subject),
    plan           text NOT NULL,
    reason         text NOT NULL,
    granted_at_ms  bigint NOT NULL,
    expires_at_ms  bigint,
    revoked_at_ms  bigint,
    revoke_reason  text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX grants_by_subject ON grants (subject) WHERE revoked_at_ms IS NULL;
