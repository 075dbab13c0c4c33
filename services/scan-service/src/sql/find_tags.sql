-- Tags with their products, for renewing the in-process cache in one round trip.
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
WHERE t.tag_id = ANY($1)
