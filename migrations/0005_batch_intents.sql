-- What a worker decided about a running batch, stored before it acts on it,
-- so a crash in the middle resumes the same decision.
-- failing_errors: JSON array of BatchError; set when the batch must end
-- `failed` (its model could not be started, its input cannot be read). The
-- worker then only finalizes it as failed; `errors` is set from it in the
-- transaction that makes the batch `failed`.
ALTER TABLE batches ADD COLUMN failing_errors TEXT;
-- The max_line_bytes the input was validated with: re-reading the input
-- (run, cancel, expiry) uses it, so lowering limits.max_line_bytes never makes
-- an accepted batch unreadable.
ALTER TABLE batches ADD COLUMN line_limit INTEGER;
