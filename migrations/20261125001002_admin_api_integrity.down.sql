ALTER TABLE refresh_tokens DROP CONSTRAINT IF EXISTS refresh_tokens_rotation_check;
ALTER TABLE refresh_families DROP CONSTRAINT IF EXISTS refresh_families_revocation_check;
DROP INDEX IF EXISTS refresh_tokens_family_expires_idx;
DROP INDEX IF EXISTS batches_created_by_idx;
DROP INDEX IF EXISTS api_keys_created_by_idx;
