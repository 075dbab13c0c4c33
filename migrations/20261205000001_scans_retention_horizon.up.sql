-- Scan retention (SCANS_RETENTION_DAYS, services/factory-service/src/events/retention.rs).
-- A scan row is what makes a redelivered event count once, so before the sweep deletes rows
-- scanned before a cutoff it records the cutoff here, and the consumer records (and counts)
-- no event scanned before it: an event whose row is gone cannot be counted again, however
-- late it comes. One row; `-infinity` until the first sweep. `moved_at` spaces the moves of
-- all instances' sweeps (a sweep deletes only up to a horizon moved minutes ago).
CREATE TABLE scans_horizon (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    before   timestamptz NOT NULL,
    moved_at timestamptz NOT NULL
);
INSERT INTO scans_horizon (before, moved_at) VALUES ('-infinity', '-infinity');
