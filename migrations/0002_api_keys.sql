-- API keys. The secret itself is never stored: only its SHA-256 (keys are
-- 256 random bits, so a fast hash is enough) and a redacted form for lists.
CREATE TABLE api_keys (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    project_id   TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    secret_hash  TEXT    NOT NULL UNIQUE,
    redacted     TEXT    NOT NULL,
    admin        INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
);
CREATE INDEX api_keys_active ON api_keys (revoked_at);
