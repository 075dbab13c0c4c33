-- Back to audit format version 1. Chain fields of version-2 rows are dropped (the rows stay).
DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events;
DROP TRIGGER IF EXISTS audit_events_no_update_delete ON audit_events;
DROP FUNCTION IF EXISTS audit_events_append_only();

ALTER TABLE audit_checkpoints
    DROP CONSTRAINT IF EXISTS audit_checkpoints_signature_key_check,
    DROP CONSTRAINT IF EXISTS audit_checkpoints_hash_check;

DROP TABLE IF EXISTS audit_chain_head;

ALTER TABLE audit_events
    DROP CONSTRAINT IF EXISTS audit_events_signature_key_check,
    DROP CONSTRAINT IF EXISTS audit_events_chain_fields_check,
    DROP CONSTRAINT IF EXISTS audit_events_version_check,
    DROP COLUMN IF EXISTS key_id,
    DROP COLUMN IF EXISTS signature,
    DROP COLUMN IF EXISTS hash,
    DROP COLUMN IF EXISTS prev_hash,
    DROP COLUMN IF EXISTS version;
