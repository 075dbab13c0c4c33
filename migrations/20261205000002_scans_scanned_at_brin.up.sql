-- no-transaction
-- The scan retention sweep (SCANS_RETENTION_DAYS) deletes the oldest scans by `scanned_at`.
-- A BRIN index fits: scans arrive roughly in `scanned_at` order, and it stays a few pages
-- however large the table grows. CONCURRENTLY (hence no transaction): the consumer goes on
-- inserting while it is built.
CREATE INDEX CONCURRENTLY IF NOT EXISTS scans_scanned_at_brin ON scans USING brin (scanned_at);
