-- Appends an unsigned version-2 event in one statement, so the chain-head lock is held for this
-- statement and the commit only, with no client round trip in between.
-- $1..$9 are the event's own fields (chain.rs: bind_event_fields). $10 and $11 are the event's
-- canonical bytes before the occurred_at value and after the seq value (canonical.rs:
-- event_prefix, event_suffix); the database fills in the middle, exactly
-- as canonical.rs writes it: the timestamp as YYYY-MM-DDTHH:MM:SS.ffffffZ, then ","seq":, then
-- the seq in decimal. The Rust verifier recomputes every hash, and the tests verify chains
-- written this way, so the two spellings cannot drift apart unnoticed.
-- The head is locked FOR UPDATE (concurrent appenders in any instance wait here; under READ
-- COMMITTED the waiter then sees the new head), and clock_timestamp() is re-read after the wait,
-- so occurred_at never goes backwards along seq.
WITH head AS (
    SELECT seq + 1 AS seq, hash AS prev_hash, clock_timestamp() AS now
    FROM audit_chain_head
    WHERE id
    FOR UPDATE
), event AS (
    SELECT seq, prev_hash, now,
           sha256(prev_hash || $10::bytea
                  || convert_to(to_char(now AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                                || '","seq":' || seq::text, 'UTF8')
                  || $11::bytea) AS hash
    FROM head
), inserted AS (
    INSERT INTO audit_events
        (seq, version, event_id, occurred_at, actor_id, actor_email, action, target_type,
         target_id, client_ip, user_agent, details, prev_hash, hash)
    SELECT seq, 2, $1, now, $2, $3, $4, $5, $6, $7, $8, $9, prev_hash, hash
    FROM event
    RETURNING seq, occurred_at, prev_hash, hash
)
UPDATE audit_chain_head
SET seq = inserted.seq, hash = inserted.hash
FROM inserted
WHERE audit_chain_head.id
RETURNING inserted.seq, inserted.occurred_at, inserted.prev_hash, inserted.hash
