-- batchd's metadata on PostgreSQL: the SQLite schema of migrations/0001..0009
-- in one file (the PostgreSQL store starts here). Released migrations are
-- never edited: add a new file instead.
--
-- Types: BIGINT for unix seconds, sizes and counters (i64 in the records);
-- BOOLEAN where SQLite stores 0/1; TEXT for the JSON columns (errors,
-- metadata, failing_errors), so that they read back byte for byte as written
-- (JSONB would reorder keys and drop whitespace; nothing queries inside them).
-- seq (an identity column) orders lists and cursors like SQLite's rowid seq:
-- created_at has one-second ties.

CREATE TABLE files (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               TEXT   NOT NULL UNIQUE,
    project_id       TEXT   NOT NULL,
    filename         TEXT   NOT NULL,
    purpose          TEXT   NOT NULL,
    bytes            BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT,
    storage_key      TEXT   NOT NULL,
    -- Deleted files keep their row (a paging cursor that names one still
    -- works) but are never returned. Their bytes are removed at once unless
    -- an unfinished batch reads the file; then the file sweep removes them
    -- later and sets bytes_removed_at.
    deleted_at       BIGINT,
    bytes_removed_at BIGINT
);
CREATE INDEX files_by_project ON files (project_id, deleted_at, seq);
CREATE INDEX files_expiring ON files (expires_at) WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
CREATE INDEX files_bytes_to_remove ON files (deleted_at) WHERE deleted_at IS NOT NULL AND bytes_removed_at IS NULL;

CREATE TABLE batches (
    seq                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                   TEXT   NOT NULL UNIQUE,
    project_id           TEXT   NOT NULL,
    endpoint             TEXT   NOT NULL,
    model                TEXT,
    input_file_id        TEXT   NOT NULL,
    completion_window    TEXT   NOT NULL,
    status               TEXT   NOT NULL,
    output_file_id       TEXT,
    error_file_id        TEXT,
    errors               TEXT,      -- JSON array of BatchError
    metadata             TEXT,      -- JSON object of string values, or NULL
    output_expires_after BIGINT,    -- seconds, anchored at the output file's creation
    created_at           BIGINT NOT NULL,
    in_progress_at       BIGINT,
    expires_at           BIGINT,
    finalizing_at        BIGINT,
    completed_at         BIGINT,
    failed_at            BIGINT,
    expired_at           BIGINT,
    cancelling_at        BIGINT,
    cancelled_at         BIGINT,
    total_requests       BIGINT NOT NULL DEFAULT 0,
    completed_requests   BIGINT NOT NULL DEFAULT 0,
    failed_requests      BIGINT NOT NULL DEFAULT 0,
    -- usage columns are NULL until the batch starts running
    input_tokens         BIGINT,
    cached_tokens        BIGINT,
    output_tokens        BIGINT,
    reasoning_tokens     BIGINT,
    total_tokens         BIGINT,
    -- JSON array of BatchError: set when a running batch must end `failed`
    -- (see migrations/0005_batch_intents.sql).
    failing_errors       TEXT,
    -- the max_line_bytes the input was validated with
    line_limit           BIGINT
);
CREATE INDEX batches_by_project ON batches (project_id, seq);
CREATE INDEX batches_by_status ON batches (status);
CREATE INDEX batches_by_input ON batches (input_file_id);

-- One row per finished input line: the rendered output or error file line.
-- The primary key makes a result exactly-once: a late duplicate is ignored.
CREATE TABLE batch_results (
    batch_id     TEXT    NOT NULL,
    line         BIGINT  NOT NULL,   -- 1-based line of the input file
    is_error     BOOLEAN NOT NULL,   -- false: output file, true: error file
    output_line  TEXT    NOT NULL,   -- the JSONL line, without its newline
    PRIMARY KEY (batch_id, line)
);
-- Finalization reads each file's lines in input order.
CREATE INDEX batch_results_by_file ON batch_results (batch_id, is_error, line);

-- API keys: only the SHA-256 of a secret and a redacted form are stored.
CREATE TABLE api_keys (
    seq          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    project_id   TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    secret_hash  TEXT    NOT NULL UNIQUE,
    redacted     TEXT    NOT NULL,
    admin        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   BIGINT  NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX api_keys_active ON api_keys (revoked_at);

-- The Uploads API: a large file sent in parts, assembled on completion.
CREATE TABLE uploads (
    seq                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                 TEXT   NOT NULL UNIQUE,
    project_id         TEXT   NOT NULL,
    filename           TEXT   NOT NULL,
    purpose            TEXT   NOT NULL,
    mime_type          TEXT   NOT NULL,
    bytes              BIGINT NOT NULL,
    created_at         BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    -- pending | completing | completed | cancelled | expired
    status             TEXT   NOT NULL,
    -- expires_after of the File the upload becomes
    file_expires_after BIGINT,
    file_id            TEXT
);
CREATE INDEX uploads_pending ON uploads (status, expires_at);

CREATE TABLE upload_parts (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT   NOT NULL UNIQUE,
    upload_id    TEXT   NOT NULL REFERENCES uploads (id),
    bytes        BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    storage_key  TEXT   NOT NULL
);
CREATE INDEX upload_parts_by_upload ON upload_parts (upload_id, seq);

-- Webhook outbox: one row per batch event, written in the same transaction
-- that makes the batch terminal, delivered (at least once) by the dispatcher.
CREATE TABLE webhook_events (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               TEXT   NOT NULL UNIQUE,   -- evt_...
    webhook_id       TEXT   NOT NULL UNIQUE,   -- wh_..., the same on every attempt
    project_id       TEXT   NOT NULL,
    type             TEXT   NOT NULL,          -- batch.completed, ...
    batch_id         TEXT   NOT NULL,
    created_at       BIGINT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    delivered_at     BIGINT,
    gave_up_at       BIGINT,
    last_error       TEXT
);
CREATE INDEX webhook_events_due ON webhook_events (delivered_at, gave_up_at, next_attempt_at);

-- The projects that have a [[webhooks]] endpoint, replaced from the
-- configuration at start: terminal transitions queue events only for these.
CREATE TABLE webhook_projects (
    project_id TEXT PRIMARY KEY
);
