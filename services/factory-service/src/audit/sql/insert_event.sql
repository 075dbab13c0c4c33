-- Inserts a version-2 event and moves the chain head to it, in one round trip.
WITH inserted AS (
    INSERT INTO audit_events
        (seq, version, event_id, occurred_at, actor_id, actor_email, action, target_type,
         target_id, client_ip, user_agent, details, prev_hash, hash, signature, key_id)
    VALUES ($1, 2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
    RETURNING seq, hash
)
UPDATE audit_chain_head
SET seq = inserted.seq, hash = inserted.hash
FROM inserted
WHERE audit_chain_head.id
