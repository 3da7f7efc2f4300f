-- Resolve a request's frontend, its dead backends and (optionally) its rate limits,
-- in one round trip.
--
-- KEYS[1..n-1]: frontend:<candidate>, in lookup order (exact host, wildcards, '*').
-- KEYS[n]:      dead:<requested host> (Hipache keys dead marks by the requested host).
-- ARGV: empty to only route. To apply rate limits (the key prefixes come from
-- cjs_proxy/pipeline/redis_keys.py, the last two arguments from ratelimit.py):
--   ARGV[1]: the frontend key prefix ("<#prefix>frontend:")
--   ARGV[2]: the tier key prefix ("<#prefix>tier:")
--   ARGV[3]: the counters' key prefix ("<#prefix>rl:")
--   ARGV[4]: client IP
--   ARGV[5]: the limits, JSON: {"tiers": {name: {"rate", "burst", "perIp"?: {"rate", "burst"},
--            "enforce"}}, "perIp"?: {"rate", "burst"}, "globalPerIp"?: {"rate", "burst"}};
--            "default" is always among the tiers.
--
-- Returns {0} when no candidate holds a non-empty list. Otherwise
-- {position (1-based), frontend list, dead ids} and, with limits, a fourth element: the
-- verdict, {tier_name, outcome, policy, quota, window, remaining, reset, retry_after_ms,
-- tier_known}, in the order of ratelimit.VERDICT_FIELDS (see limits.lua).
-- The limits are decided by limits.lua's decide(), which store.py puts in front of this.
local last = #KEYS
local position, frontend = 0, nil
for i = 1, last - 1 do
  local list = redis.call('LRANGE', KEYS[i], 0, -1)
  if #list > 0 then
    position, frontend = i, list
    break
  end
end
if position == 0 then
  return {0}
end
local dead = redis.call('SMEMBERS', KEYS[last])
if #ARGV == 0 then
  return {position, frontend, dead}
end

local app = string.sub(KEYS[position], #ARGV[1] + 1)
return {position, frontend, dead, decide(app, ARGV[2], ARGV[3], ARGV[4], cjson.decode(ARGV[5]))}
