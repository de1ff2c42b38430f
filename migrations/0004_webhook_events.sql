-- Webhook outbox: one row per batch event, written in the same transaction
-- that makes the batch terminal, delivered (at least once) by the dispatcher.
CREATE TABLE webhook_events (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,   -- evt_...
    webhook_id       TEXT    NOT NULL UNIQUE,   -- wh_..., the same on every attempt
    project_id       TEXT    NOT NULL,
    type             TEXT    NOT NULL,          -- batch.completed, ...
    batch_id         TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    delivered_at     INTEGER,
    gave_up_at       INTEGER,
    last_error       TEXT
);
CREATE INDEX webhook_events_due ON webhook_events (delivered_at, gave_up_at, next_attempt_at);
