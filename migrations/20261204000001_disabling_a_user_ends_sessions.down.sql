DROP TRIGGER IF EXISTS users_disabled_revokes_sessions ON users;
DROP FUNCTION IF EXISTS revoke_sessions_of_disabled_user();
