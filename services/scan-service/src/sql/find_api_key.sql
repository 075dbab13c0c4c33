-- An API key that is still valid, by the SHA-256 of the full key string.
SELECT id, rate_limit_per_minute
FROM api_keys
WHERE key_hash = $1
  AND revoked_at IS NULL
