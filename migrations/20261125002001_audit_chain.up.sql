-- Audit log format version 2: a hash chain over audit_events (docs/AUDIT_FORMAT.md).
--
-- Existing rows are version 1 (no chain fields) and stay readable; the chain starts at the first
-- version-2 event, which links to 32 zero bytes.

ALTER TABLE audit_events
    ADD COLUMN version   smallint NOT NULL DEFAULT 1,
    ADD COLUMN prev_hash bytea,
    ADD COLUMN hash      bytea,
    ADD COLUMN signature bytea,
    ADD COLUMN key_id    text;

-- New rows must say which format they are in: no silent version-1 rows after the chain exists.
ALTER TABLE audit_events ALTER COLUMN version DROP DEFAULT;

ALTER TABLE audit_events
    ADD CONSTRAINT audit_events_version_check CHECK (version IN (1, 2)),
    ADD CONSTRAINT audit_events_chain_fields_check CHECK (
        version = 1
        OR (length(prev_hash) = 32 AND length(hash) = 32)
    ),
    ADD CONSTRAINT audit_events_signature_key_check CHECK (signature IS NULL OR key_id IS NOT NULL);

-- The chain head: one row, locked (SELECT ... FOR UPDATE) by every append for the rest of the
-- appending transaction. That serializes appends across all instances, keeps seq gap-free, and
-- avoids a MAX(seq) scan per append. `hash` is the hash of the event at `seq`, or 32 zero bytes
-- while no version-2 event exists (legacy rows only).
CREATE TABLE audit_chain_head (
    id   boolean PRIMARY KEY DEFAULT true CHECK (id),
    seq  bigint NOT NULL CHECK (seq >= 0),
    hash bytea  NOT NULL CHECK (length(hash) = 32)
);
INSERT INTO audit_chain_head (id, seq, hash)
SELECT true, COALESCE(MAX(seq), 0), decode(repeat('00', 32), 'hex') FROM audit_events;

-- Checkpoints: the chain head at `seq`, signed (when a key is configured). The core schema has
-- the table; version-2 checkpoints always carry a 32-byte hash.
ALTER TABLE audit_checkpoints
    ADD CONSTRAINT audit_checkpoints_hash_check CHECK (length(hash) = 32),
    ADD CONSTRAINT audit_checkpoints_signature_key_check CHECK (signature IS NULL OR key_id IS NOT NULL);

-- Defence in depth against accidents: the service never updates or deletes audit rows. (A
-- database owner can still disable this; the hash chain and signatures are what detect that.)
CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
