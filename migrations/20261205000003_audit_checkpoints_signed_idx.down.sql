-- no-transaction
DROP INDEX CONCURRENTLY IF EXISTS audit_checkpoints_signed_seq_idx;
