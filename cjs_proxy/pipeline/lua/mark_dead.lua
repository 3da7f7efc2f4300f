-- Mark a backend dead, as Hipache does, in one round trip.
--
-- KEYS[1]: dead:<requested host>    KEYS[2]: hchecker_ping (no prefix, as in Hipache)
-- ARGV: backend id, TTL seconds, channel, message "<host>;<url>;<id>;<count>",
--       seconds after which an hchecker_ping is stale.
-- While an external health checker is alive (hchecker_ping fresh), the dead set is
-- its business: only publish. Returns 1 when the set was written, 0 otherwise.
local ping = tonumber(redis.call('GET', KEYS[2]) or '')
local now = tonumber(redis.call('TIME')[1])
local checker_alive = ping ~= nil and (now - ping) < tonumber(ARGV[5])
local written = 0
if not checker_alive then
  redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  written = 1
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return written
