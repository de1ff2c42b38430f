-- batchd's metadata. Stored bytes live in the object store; rows here point at them.
-- Released migrations are never edited: add a new file instead.

CREATE TABLE files (
    -- seq orders lists and cursors: created_at has one-second ties.
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    project_id   TEXT    NOT NULL,
    filename     TEXT    NOT NULL,
    purpose      TEXT    NOT NULL,
    bytes        INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    storage_key  TEXT    NOT NULL,
    -- Deleted files keep their row (so a paging cursor that names one still works)
    -- but are never returned; their bytes are removed.
    deleted_at   INTEGER
);
CREATE INDEX files_by_project ON files (project_id, deleted_at, seq);

CREATE TABLE batches (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    id                   TEXT    NOT NULL UNIQUE,
    project_id           TEXT    NOT NULL,
    endpoint             TEXT    NOT NULL,
    model                TEXT,
    input_file_id        TEXT    NOT NULL,
    completion_window    TEXT    NOT NULL,
    status               TEXT    NOT NULL,
    output_file_id       TEXT,
    error_file_id        TEXT,
    errors               TEXT,      -- JSON array of BatchError, set on validation failure
    metadata             TEXT,      -- JSON object of string values, or NULL
    output_expires_after INTEGER,   -- seconds, anchored at the output file's creation
    created_at           INTEGER NOT NULL,
    in_progress_at       INTEGER,
    expires_at           INTEGER,
    finalizing_at        INTEGER,
    completed_at         INTEGER,
    failed_at            INTEGER,
    expired_at           INTEGER,
    cancelling_at        INTEGER,
    cancelled_at         INTEGER,
    total_requests       INTEGER NOT NULL DEFAULT 0,
    completed_requests   INTEGER NOT NULL DEFAULT 0,
    failed_requests      INTEGER NOT NULL DEFAULT 0,
    -- usage columns are NULL until the batch starts running
    input_tokens         INTEGER,
    cached_tokens        INTEGER,
    output_tokens        INTEGER,
    reasoning_tokens     INTEGER,
    total_tokens         INTEGER
);
CREATE INDEX batches_by_project ON batches (project_id, seq);
CREATE INDEX batches_by_status ON batches (status);

-- One row per finished input line: the rendered output or error file line.
-- The primary key makes a result exactly-once: a late duplicate is ignored.
CREATE TABLE batch_results (
    batch_id     TEXT    NOT NULL,
    line         INTEGER NOT NULL,   -- 1-based line of the input file
    is_error     INTEGER NOT NULL,   -- 0: output file, 1: error file
    output_line  TEXT    NOT NULL,   -- the JSONL line, without its newline
    PRIMARY KEY (batch_id, line)
) WITHOUT ROWID;
-- Finalization reads each file's lines in input order.
CREATE INDEX batch_results_by_file ON batch_results (batch_id, is_error, line);
