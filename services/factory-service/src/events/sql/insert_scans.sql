-- Record a batch of scan events (parallel arrays, one element per event, event ids unique and
-- sorted). An event already recorded (a redelivery or a duplicate publish, possibly being
-- inserted by another consumer right now) inserts nothing; RETURNING names only the new rows,
-- the ones to count. Sorted ids mean two consumers inserting overlapping batches wait on each
-- other in the same order and cannot deadlock. An event scanned before the retention horizon
-- inserts nothing either: its row may have been deleted, so it may have been counted already
-- (events/retention.rs).
INSERT INTO scans (event_id, tag_id, result, scanned_at, client_ip_hash, api_key_id, user_agent)
SELECT e.*
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::uuid[], $7::text[])
    AS e (event_id, tag_id, result, scanned_at, client_ip_hash, api_key_id, user_agent)
WHERE e.scanned_at >= COALESCE((SELECT before FROM scans_horizon), '-infinity')
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id, tag_id, scanned_at
