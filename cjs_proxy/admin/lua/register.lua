-- Register (or renew) a backend beside a frontend's static list, on Redis' clock.
--
-- KEYS[1]: backends:<host> (sorted set: URL -> expiry, unix ms)
-- KEYS[2]: weights:<host>  KEYS[3]: identifier:<host>
-- ARGV: URL, TTL seconds, weight ('' to leave weights alone), identifier ('' for none).
-- Expired members are pruned here (this runs on the write connection; lookups, which may
-- run on a replica, only skip them). The keys are given a TTL of their own, only ever
-- lengthened, so a host whose registrars all died leaves nothing behind, and a short TTL
-- never cuts another registrar's longer one. Returns 1 for a new member, 0 for a renewal.
if redis.replicate_commands then
  redis.replicate_commands()  -- TIME before writes: replicate effects (Redis < 5 default)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl_ms = tonumber(ARGV[2]) * 1000
local function outlive(key, ms)
  local left = redis.call('PTTL', key)
  if left >= 0 and left < ms then
    redis.call('PEXPIRE', key, ms)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local fresh = redis.call('PTTL', KEYS[1]) == -2
local added = redis.call('ZADD', KEYS[1], now + ttl_ms, ARGV[1])
if fresh then
  redis.call('PEXPIRE', KEYS[1], ttl_ms + 1000)
else
  outlive(KEYS[1], ttl_ms + 1000)
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
if ARGV[4] ~= '' then
  local left = redis.call('PTTL', KEYS[3])
  redis.call('SET', KEYS[3], ARGV[4], 'PX', math.max(left, ttl_ms + 1000))
end
return added
