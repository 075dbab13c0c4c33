-- Idempotent results are kept sealed (AES-256-GCM) under a key derived from the caller's
-- Idempotency-Key, which the server stores only as a hash (see
-- services/factory-service/src/idempotency/seal.rs). A result that carries a secret, the new
-- key of POST /v1/api-keys, is then unreadable from the database or a dump.
ALTER TABLE idempotency_keys
    ADD COLUMN sealed_body bytea,
    ALTER COLUMN body DROP NOT NULL,
    ADD CONSTRAINT idempotency_keys_result_present
        CHECK (body IS NOT NULL OR sealed_body IS NOT NULL);

-- Results recorded in clear before this change: take out the API keys they hold.
UPDATE idempotency_keys
SET body = jsonb_set(body, '{key}', '"[redacted]"')
WHERE body ? 'key';
