-- The projects that have a [[webhooks]] endpoint. The webhook dispatcher
-- replaces the rows from the configuration at start; a terminal transition
-- queues an event in webhook_events only for these projects, so batches of
-- projects without webhooks leave no outbox rows behind.
CREATE TABLE webhook_projects (
    project_id TEXT PRIMARY KEY
) WITHOUT ROWID;
