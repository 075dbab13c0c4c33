-- no-transaction
DROP INDEX CONCURRENTLY IF EXISTS tags_batch_tag_idx;
