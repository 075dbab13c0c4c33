-- Releases an in-flight idempotency claim, but only if it is still ours: a claim whose lease
-- ran out may already belong to a retry, which must keep it.
-- KEYS[1] the idempotency key, ARGV[1] the claim value we wrote.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
