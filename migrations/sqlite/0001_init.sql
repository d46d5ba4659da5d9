-- keygate admin store, SQLite. Timestamps are fixed-width UTC text
-- (YYYY-MM-DDTHH:MM:SS.ffffffZ) so they sort and compare as text.
CREATE TABLE keys (
    id             TEXT PRIMARY KEY,
    org_id         TEXT,
    owner_type     TEXT NOT NULL CHECK (owner_type IN ('user', 'org')),
    owner_id       TEXT NOT NULL,
    name           TEXT NOT NULL,
    display_prefix TEXT NOT NULL,
    key_hash       TEXT NOT NULL UNIQUE,
    environment    TEXT NOT NULL,
    scopes         TEXT NOT NULL,             -- JSON array of strings
    restrictions   TEXT NOT NULL,             -- JSON {read_only, routes}
    quota_limit    INTEGER,
    metadata       TEXT NOT NULL DEFAULT '{}',
    created_by     TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    last_used_at   TEXT,
    expires_at     TEXT,
    paused         INTEGER NOT NULL DEFAULT 0,
    revoked_at     TEXT
);
CREATE INDEX keys_org_created ON keys (org_id, created_at);

-- Requests charged per key per quota period; written in batches.
CREATE TABLE quota_usage (
    key_id       TEXT NOT NULL,
    period_start INTEGER NOT NULL,            -- unix seconds
    used         INTEGER NOT NULL,
    PRIMARY KEY (key_id, period_start)
);

-- Every change to a key, with its actor. Running proxies also read it as a change
-- feed (by seq) to evict their caches.
CREATE TABLE audit_log (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    at     TEXT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    key_id TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
