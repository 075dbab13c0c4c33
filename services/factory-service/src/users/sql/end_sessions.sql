-- Revokes every session of user $1 still open, for reason $2; counts those that were live (a
-- token in them could still be refreshed), not those that had lapsed.
WITH ended AS (
    UPDATE refresh_families SET revoked_at = now(), revoked_reason = $2
     WHERE user_id = $1 AND revoked_at IS NULL
 RETURNING id)
SELECT count(*) FROM ended e
 WHERE EXISTS (SELECT 1 FROM refresh_tokens t
                WHERE t.family_id = e.id AND t.rotated_at IS NULL
                  AND t.expires_at > now())
