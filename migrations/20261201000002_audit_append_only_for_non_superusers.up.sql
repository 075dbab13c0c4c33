-- The append-only triggers now refuse UPDATE, DELETE and TRUNCATE of audit_events to every role
-- but a superuser. The service's own role (never a superuser in production, see
-- docs/AUDIT_FORMAT.md) is still refused; a superuser could disable the triggers anyway, so
-- refusing one only got in the way of a database administrator's repairs and of tamper drills,
-- while what detects such changes is the hash chain and the signatures.
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        RETURN CASE TG_OP WHEN 'DELETE' THEN OLD WHEN 'UPDATE' THEN NEW ELSE NULL END;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
