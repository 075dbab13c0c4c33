-- Record one scan event; a redelivered or duplicated event (same event_id) inserts nothing.
INSERT INTO scans (event_id, tag_id, result, scanned_at, client_ip_hash, api_key_id, user_agent)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (event_id) DO NOTHING
