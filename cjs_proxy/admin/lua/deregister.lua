-- Remove a registered backend at once (its registrar is stopping).
-- KEYS[1]: backends:<host>  KEYS[2]: weights:<host>
-- ARGV[1]: URL  ARGV[2]: '1' when the registrar set the URL's weight (it is removed too).
-- Returns 1 when the member was there.
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return removed
