-- no-transaction
-- The scan retention sweep (SCANS_RETENTION_DAYS) deletes the oldest scans by `scanned_at`.
-- A B-tree (a BRIN index would stop narrowing anything once the space of deleted rows is
-- reused by new ones). CONCURRENTLY (hence no transaction): the consumer goes on inserting
-- while it is built. No IF NOT EXISTS: a build that failed half way leaves an invalid index of
-- this name, and a rerun must say so rather than take it for done (`factory-service migrate`
-- also refuses to finish while any index is invalid).
CREATE INDEX CONCURRENTLY scans_scanned_at_idx ON scans (scanned_at);
