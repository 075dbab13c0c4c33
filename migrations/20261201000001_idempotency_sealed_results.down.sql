-- Sealed results cannot be turned back into clear ones: they are dropped (retries with their
-- keys then run again, as after the records' expiry).
DELETE FROM idempotency_keys WHERE body IS NULL;
ALTER TABLE idempotency_keys
    DROP CONSTRAINT idempotency_keys_result_present,
    DROP COLUMN sealed_body,
    ALTER COLUMN body SET NOT NULL;
