-- Resolve a request's frontend, its dead backends, its registered backends and balancing,
-- and (optionally) its rate limits, in one round trip.
--
-- KEYS[1..n-1]: frontend:<candidate>, in lookup order (exact host, wildcards, '*').
-- KEYS[n]:      dead:<requested host> (Hipache keys dead marks by the requested host).
-- ARGV[1..7]:   the prefixes of frontend:, dead:, backends:, identifier:, deadurls:,
--               balance:, weights: (redis_keys.ROUTE_PREFIXES, with the driver's #prefix).
-- ARGV[8..]:    empty to only route. To apply rate limits (the key prefixes come from
-- cjs_proxy/pipeline/redis_keys.py, the last two arguments from ratelimit.py):
--   ARGV[8]:  the tier key prefix ("<#prefix>tier:")
--   ARGV[9]:  the counters' key prefix ("<#prefix>rl:")
--   ARGV[10]: client IP
--   ARGV[11]: the limits, JSON: {"tiers": {name: {"rate", "burst", "perIp"?: {"rate", "burst"},
--            "enforce"}}, "perIp"?: {"rate", "burst"}, "globalPerIp"?: {"rate", "burst"}};
--            "default" is always among the tiers.
--
-- A candidate matches when its frontend: list is non-empty or backends:<candidate> holds
-- a registration that has not expired (score: expiry in unix ms, Redis' clock). Expired
-- registrations are skipped, never deleted: this may run on a read-only replica.
--
-- Returns {0} when no candidate matches. Otherwise {position (1-based), frontend list
-- (just {identifier} when only registered backends serve it), dead ids, the verdict or 0,
-- routing}, routing = {registered URLs, ms until the first of them expires (-1: none),
-- deadurls:<requested host>, balance:<candidate> ('' when unset), weights:<candidate> as
-- a flat list}. The verdict, with limits, is {tier_name, outcome, policy, quota, window,
-- remaining, reset, retry_after_ms, tier_known}, in the order of ratelimit.VERDICT_FIELDS:
-- limits.lua's decide(), which store.py puts in front of this script, makes it.
local last = #KEYS
local p_frontend, p_dead, p_backends, p_identifier = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local p_deadurls, p_balance, p_weights = ARGV[5], ARGV[6], ARGV[7]
local position, frontend, app = 0, nil, nil
local registered, first_expiry, now_ms = {}, -1, nil
for i = 1, last - 1 do
  local name = string.sub(KEYS[i], #p_frontend + 1)
  local list = redis.call('LRANGE', KEYS[i], 0, -1)
  local scored = redis.call('ZRANGE', p_backends .. name, 0, -1, 'WITHSCORES')
  if #scored > 0 then
    if now_ms == nil then
      local t = redis.call('TIME')
      now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    for j = 1, #scored, 2 do
      local expiry = tonumber(scored[j + 1])
      if expiry > now_ms then
        registered[#registered + 1] = scored[j]
        if first_expiry < 0 or expiry - now_ms < first_expiry then
          first_expiry = expiry - now_ms
        end
      end
    end
  end
  if #list > 0 or #registered > 0 then
    if #list == 0 then
      list = {redis.call('GET', p_identifier .. name) or name}
    end
    position, frontend, app = i, list, name
    break
  end
end
if position == 0 then
  return {0}
end
local dead = redis.call('SMEMBERS', KEYS[last])
local dead_urls = {}
if #registered > 0 then
  dead_urls = redis.call('SMEMBERS', p_deadurls .. string.sub(KEYS[last], #p_dead + 1))
end
local routing = {registered, first_expiry, dead_urls, redis.call('GET', p_balance .. app) or '',
                 redis.call('HGETALL', p_weights .. app)}
if #ARGV == 7 then
  return {position, frontend, dead, 0, routing}
end

return {position, frontend, dead, decide(app, ARGV[8], ARGV[9], ARGV[10], cjson.decode(ARGV[11])), routing}
