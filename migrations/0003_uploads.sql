-- The Uploads API: a large file sent in parts, assembled on completion.
CREATE TABLE uploads (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    id                 TEXT    NOT NULL UNIQUE,
    project_id         TEXT    NOT NULL,
    filename           TEXT    NOT NULL,
    purpose            TEXT    NOT NULL,
    mime_type          TEXT    NOT NULL,
    bytes              INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    -- pending | completed | cancelled | expired
    status             TEXT    NOT NULL,
    -- expires_after of the File the upload becomes
    file_expires_after INTEGER,
    file_id            TEXT
);
CREATE INDEX uploads_pending ON uploads (status, expires_at);

CREATE TABLE upload_parts (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    upload_id    TEXT    NOT NULL REFERENCES uploads (id),
    bytes        INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    storage_key  TEXT    NOT NULL
);
CREATE INDEX upload_parts_by_upload ON upload_parts (upload_id);
