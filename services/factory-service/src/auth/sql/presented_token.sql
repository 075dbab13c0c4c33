-- A presented refresh token with its family and user; locks the token and family rows.
SELECT t.id                       AS token_id,
       t.family_id                AS family_id,
       t.rotated_at IS NOT NULL   AS rotated,
       t.expires_at <= now()      AS expired,
       f.revoked_at IS NOT NULL   AS family_revoked,
       f.created_at               AS session_started_at,
       f.device_id                AS device_id,
       u.id                       AS user_id,
       u.email                    AS email,
       u.role                     AS role,
       u.disabled_at IS NOT NULL  AS user_disabled
FROM refresh_tokens t
JOIN refresh_families f ON f.id = t.family_id
JOIN users u ON u.id = f.user_id
WHERE t.token_hash = $1
FOR UPDATE OF t, f
