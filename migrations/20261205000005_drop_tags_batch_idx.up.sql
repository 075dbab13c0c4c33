-- no-transaction
-- tags_batch_tag_idx (batch_id, tag_id) serves every look-up tags_batch_idx (batch_id) served
-- (the foreign key to batches included); one index fewer to write for each of a batch's tags.
DROP INDEX CONCURRENTLY IF EXISTS tags_batch_idx;
