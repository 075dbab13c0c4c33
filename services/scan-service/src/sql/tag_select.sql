-- Tags with their products, for the scan answer; `tags.rs` appends the WHERE clause (one id,
-- or a batch of ids to renew the in-process cache).
SELECT t.tag_id,
       t.status,
       t.batch_id,
       t.scan_count,
       t.first_scanned_at,
       p.id   AS product_id,
       p.name AS product_name,
       p.sku  AS product_sku
FROM tags t
JOIN products p ON p.id = t.product_id
