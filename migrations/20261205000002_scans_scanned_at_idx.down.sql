-- no-transaction
DROP INDEX CONCURRENTLY IF EXISTS scans_scanned_at_idx;
