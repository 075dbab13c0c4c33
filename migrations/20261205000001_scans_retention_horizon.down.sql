DROP TABLE IF EXISTS scans_horizon;
