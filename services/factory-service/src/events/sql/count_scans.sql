-- Count newly recorded scans on their tags: per tag, how many and the earliest scan time.
-- Events may arrive out of order, so first_scanned_at keeps the earliest (LEAST ignores NULL).
UPDATE tags AS t
SET scan_count = t.scan_count + c.scans,
    first_scanned_at = LEAST(t.first_scanned_at, c.first_scanned_at)
FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS c (tag_id, scans, first_scanned_at)
WHERE t.tag_id = c.tag_id
