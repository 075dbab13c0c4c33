-- Indexes and checks for the admin API's tables that the core schema left out.

-- Foreign keys to users get indexes, so removing a user (ON DELETE SET NULL) does not scan
-- these tables, and "keys/batches created by" look-ups stay cheap.
CREATE INDEX api_keys_created_by_idx ON api_keys (created_by);
CREATE INDEX batches_created_by_idx ON batches (created_by);

-- The sweeper deletes families none of whose tokens is still valid.
CREATE INDEX refresh_tokens_family_expires_idx ON refresh_tokens (family_id, expires_at);

-- A revocation always says why (reuse, device_mismatch, logout), and a reason implies one.
ALTER TABLE refresh_families
    ADD CONSTRAINT refresh_families_revocation_check
    CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL));

-- A token is rotated at most once, after it was issued.
ALTER TABLE refresh_tokens
    ADD CONSTRAINT refresh_tokens_rotation_check
    CHECK (rotated_at IS NULL OR rotated_at >= created_at);
