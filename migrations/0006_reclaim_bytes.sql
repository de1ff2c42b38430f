-- Stored bytes are freed even when they could not be freed at once.
--
-- Correction to 0001's comment on files.deleted_at ("their bytes are removed"),
-- which cannot be edited there (sqlx checks the checksums of applied migrations):
-- a deleted (or expired) file's bytes are removed at once, unless a batch that
-- has not ended reads the file as its input (also after a restart). Then they
-- are removed by the file sweep once no such batch is left. bytes_removed_at
-- says when the bytes went; NULL on a deleted row means the sweep still has to
-- remove them. Rows deleted before this migration start as NULL: the first
-- sweep removes whatever they left behind (removing a missing object is fine).
ALTER TABLE files ADD COLUMN bytes_removed_at INTEGER;
CREATE INDEX files_bytes_to_remove ON files (deleted_at) WHERE deleted_at IS NOT NULL AND bytes_removed_at IS NULL;

-- batch_results rows are deleted in the transaction that registers a batch's
-- result files and makes it terminal: from then on the files are the results
-- (see docs/durability.md).
