-- Idempotency keys recorded in the same transaction as the side effect they guard (CONTRACT
-- 3.4), so a retry after a crash finds the result here and replays it instead of acting twice.
-- Redis fronts this table for the in-flight claim and fast replays; this is the source of truth.
CREATE TABLE idempotency_keys (
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the Idempotency-Key header: keys are caller-chosen and may be long.
    key_hash    bytea NOT NULL CHECK (length(key_hash) = 32),
    -- SHA-256 of method, path and body of the request that used the key.
    fingerprint bytea NOT NULL CHECK (length(fingerprint) = 32),
    status      smallint NOT NULL CHECK (status BETWEEN 200 AND 499),
    body        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (user_id, key_hash),
    CHECK (expires_at > created_at)
);
CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);
