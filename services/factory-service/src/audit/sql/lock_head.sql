-- Locks the chain head for the rest of the appending transaction. Concurrent appenders (in this
-- or any other instance) wait here; under READ COMMITTED the waiter then sees the new head.
-- clock_timestamp() is read under the lock, so occurred_at never goes backwards along seq.
SELECT seq, hash, clock_timestamp() AS now
FROM audit_chain_head
WHERE id
FOR UPDATE
