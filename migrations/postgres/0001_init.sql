-- keygate admin store, PostgreSQL.
CREATE TABLE keys (
    id             UUID PRIMARY KEY,
    org_id         TEXT,
    owner_type     TEXT NOT NULL CHECK (owner_type IN ('user', 'org')),
    owner_id       TEXT NOT NULL,
    name           TEXT NOT NULL,
    display_prefix TEXT NOT NULL,
    key_hash       TEXT NOT NULL UNIQUE,
    environment    TEXT NOT NULL,
    scopes         TEXT[] NOT NULL,
    restrictions   JSONB NOT NULL,
    quota_limit    BIGINT,
    metadata       JSONB NOT NULL DEFAULT '{}',
    created_by     TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    last_used_at   TIMESTAMPTZ,
    expires_at     TIMESTAMPTZ,
    paused         BOOLEAN NOT NULL DEFAULT FALSE,
    revoked_at     TIMESTAMPTZ
);
CREATE INDEX keys_org_created ON keys (org_id, created_at);

-- Requests charged per key per quota period; written in batches by every replica.
CREATE TABLE quota_usage (
    key_id       UUID NOT NULL,
    period_start BIGINT NOT NULL,             -- unix seconds
    used         BIGINT NOT NULL,
    PRIMARY KEY (key_id, period_start)
);

-- Every change to a key, with its actor. Changes are also announced with
-- NOTIFY keygate_key_changes, '<key id>' in the same transaction.
CREATE TABLE audit_log (
    seq    BIGSERIAL PRIMARY KEY,
    at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    key_id UUID,
    detail JSONB NOT NULL DEFAULT '{}'
);
