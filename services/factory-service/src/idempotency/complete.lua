-- Stores a finished idempotent result, but only if our in-flight claim still holds the key: a
-- claim whose lease ran out may belong to a retry by now, or hold that retry's own result.
-- KEYS[1] the idempotency key, ARGV[1] the claim value we wrote, ARGV[2] the result,
-- ARGV[3] its time to live in milliseconds.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
