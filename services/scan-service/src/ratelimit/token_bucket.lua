-- Token bucket, decided atomically inside Redis with Redis's own clock.
--
-- KEYS[1]  the bucket (one hash tag, so the script is valid on Redis Cluster)
-- ARGV[1]  capacity: the burst, in tokens
-- ARGV[2]  refill rate, in tokens per minute
-- ARGV[3]  cost of this request, in tokens
--
-- Returns {allowed (1|0), remaining whole tokens, reset (Unix seconds when full again),
--          retry_after (whole seconds until `cost` tokens are there; 0 when allowed)}.
--
-- State is {tokens, ts} with ts in microseconds of Redis TIME. A bucket that is full is the same
-- as no key at all, so the key expires exactly when the bucket would be full again.

local capacity = tonumber(ARGV[1])
local per_minute = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local per_us = per_minute / 60000000

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
-- Never refill backwards if the clock stepped back (failover to a replica with another clock).
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * per_us)
  ts = now
end
-- A lowered capacity (a key's override changed) takes effect at once.
tokens = math.min(tokens, capacity)

local allowed = 0
local retry_after = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  retry_after = math.max(1, math.ceil((cost - tokens) / per_us / 1000000))
end

local full_in_us = math.ceil((capacity - tokens) / per_us)
if full_in_us > 0 then
  -- %d and %.9f keep full precision; Lua's default number format keeps only 14 digits.
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.9f', tokens), 'ts', string.format('%d', ts))
  redis.call('PEXPIRE', KEYS[1], math.ceil(full_in_us / 1000))
else
  redis.call('DEL', KEYS[1])
end

local reset = math.ceil((ts + full_in_us) / 1000000)
return {allowed, math.floor(tokens), reset, retry_after}
