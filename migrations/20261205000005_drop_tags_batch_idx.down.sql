-- no-transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS tags_batch_idx ON tags (batch_id);
