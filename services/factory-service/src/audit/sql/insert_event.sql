-- Inserts a version-2 event and moves the chain head to it, in one round trip.
-- $1..$9 are the event's own fields, bound in the same order as for append_event.sql
-- (chain.rs: bind_event_fields).
WITH inserted AS (
    INSERT INTO audit_events
        (event_id, actor_id, actor_email, action, target_type, target_id, client_ip, user_agent,
         details, seq, version, occurred_at, prev_hash, hash, signature, key_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 2, $11, $12, $13, $14, $15)
    RETURNING seq, hash
)
UPDATE audit_chain_head
SET seq = inserted.seq, hash = inserted.hash
FROM inserted
WHERE audit_chain_head.id
