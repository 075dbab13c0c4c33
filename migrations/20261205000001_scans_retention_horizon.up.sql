-- Scan retention (SCANS_RETENTION_DAYS, services/factory-service/src/events/retention.rs).
-- A scan row is what makes a redelivered event count once, so before the sweep deletes rows
-- scanned before a cutoff it records the cutoff here, and the consumer records (and counts)
-- no event scanned before it: an event whose row is gone cannot be counted again, however
-- late it comes. One row; `-infinity` until the first sweep that deletes.
CREATE TABLE scans_horizon (
    id     boolean PRIMARY KEY DEFAULT true CHECK (id),
    before timestamptz NOT NULL
);
INSERT INTO scans_horizon (before) VALUES ('-infinity');
