-- Count newly recorded scans on their tags: per tag, how many and the earliest scan time.
-- Events may arrive out of order, so first_scanned_at keeps the earliest (LEAST ignores NULL).
-- No tag is scanned before it was made: a scan dated earlier was dated by a scanning instance
-- whose clock ran behind, and first_scanned_at would keep that falsehood for good, so it counts
-- as scanned when the tag was made.
UPDATE tags AS t
SET scan_count = t.scan_count + c.scans,
    first_scanned_at = LEAST(t.first_scanned_at, GREATEST(c.first_scanned_at, t.created_at))
FROM unnest($1::text[], $2::bigint[], $3::timestamptz[]) AS c (tag_id, scans, first_scanned_at)
WHERE t.tag_id = c.tag_id
