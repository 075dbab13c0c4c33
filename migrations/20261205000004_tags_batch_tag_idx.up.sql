-- no-transaction
-- A batch's tag CSV (GET /v1/batches/{id}/tags) reads its tags in tag_id order. With only
-- tags_batch_idx (batch_id), PostgreSQL sorted each batch's tags for every download, a sort of
-- 100,000 ids spilling to disk, which any viewer could ask for again and again. In this index
-- they come in order (and, once vacuumed, from the index alone). It also serves every look-up by
-- batch_id, so the next migration drops tags_batch_idx. CONCURRENTLY, no IF NOT EXISTS: as for
-- scans_scanned_at_idx.
CREATE INDEX CONCURRENTLY tags_batch_tag_idx ON tags (batch_id, tag_id);
