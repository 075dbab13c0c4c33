-- no-transaction
-- GET /v1/audit/checkpoint serves the newest *signed* checkpoint. Down the primary key, that
-- look-up read every unsigned checkpoint newer than it (an instance run without its signing key
-- writes one a minute), and all of them on a chain never signed: a public route reading a row
-- more each minute, for ever. This index holds only the signed ones, so it reads one entry.
-- CONCURRENTLY (hence no transaction): the checkpointer goes on writing while it is built. No
-- IF NOT EXISTS, as for scans_scanned_at_idx: an invalid index left by a failed build must be
-- named, not taken for done.
CREATE INDEX CONCURRENTLY audit_checkpoints_signed_seq_idx ON audit_checkpoints (seq)
    WHERE signature IS NOT NULL;
