-- Disabling a user ends their sessions for good, however it is done (SQL included): every
-- refresh-token family of theirs still live is revoked (`user_disabled`), so their refresh and
-- access tokens stop working, and enabling the account again does not bring those sessions
-- back (a compromised account's attacker stays out). The user signs in anew.
CREATE FUNCTION revoke_sessions_of_disabled_user() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE refresh_families
       SET revoked_at = now(), revoked_reason = 'user_disabled'
     WHERE user_id = NEW.id AND revoked_at IS NULL;
    RETURN NEW;
END
$$;

CREATE TRIGGER users_disabled_revokes_sessions
    AFTER UPDATE OF disabled_at ON users
    FOR EACH ROW
    WHEN (OLD.disabled_at IS NULL AND NEW.disabled_at IS NOT NULL)
    EXECUTE FUNCTION revoke_sessions_of_disabled_user();

-- Users disabled before this migration: their sessions end now, as if disabled after it.
UPDATE refresh_families f
   SET revoked_at = now(), revoked_reason = 'user_disabled'
  FROM users u
 WHERE u.id = f.user_id AND u.disabled_at IS NOT NULL AND f.revoked_at IS NULL;
