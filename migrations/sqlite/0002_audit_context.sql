-- Who acted, from where and how, and whose key it was (for org-scoped audit views).
ALTER TABLE audit_log ADD COLUMN actor_key_id TEXT;
ALTER TABLE audit_log ADD COLUMN client_ip TEXT;
ALTER TABLE audit_log ADD COLUMN auth_method TEXT NOT NULL DEFAULT 'cli';
ALTER TABLE audit_log ADD COLUMN org_id TEXT;
CREATE INDEX audit_log_org ON audit_log (org_id, seq);
