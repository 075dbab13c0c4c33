-- Every user with their live sessions (not revoked, with a token that can still be refreshed).
SELECT u.id, u.email, u.role, u.created_at, u.disabled_at,
       (SELECT count(*) FROM refresh_families f
         WHERE f.user_id = u.id AND f.revoked_at IS NULL
           AND EXISTS (SELECT 1 FROM refresh_tokens t
                        WHERE t.family_id = f.id AND t.rotated_at IS NULL
                          AND t.expires_at > now())) AS live_sessions
  FROM users u
 ORDER BY u.email
