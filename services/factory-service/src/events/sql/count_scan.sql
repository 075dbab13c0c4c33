-- Count a newly recorded scan on its tag (no row for unknown tags). Events may arrive out of
-- order, so first_scanned_at keeps the earliest scan time (LEAST ignores NULL).
UPDATE tags
SET scan_count = scan_count + 1,
    first_scanned_at = LEAST(first_scanned_at, $2)
WHERE tag_id = $1
