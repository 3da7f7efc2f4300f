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
-- remaining, reset, retry_after_ms, tier_known}, in the order of ratelimit.VERDICT_FIELDS
-- (see the end of this script).
--
-- Limits are GCRA: one key per limit holding the theoretical arrival time in
-- microseconds of Redis TIME, so proxy clocks do not matter and memory is O(1) per key.
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

if redis.replicate_commands then
  redis.replicate_commands()  -- TIME before writes: replicate effects (Redis < 5 default)
end
local tier_prefix, counters, ip = ARGV[8], ARGV[9], ARGV[10]
local config = cjson.decode(ARGV[11])

-- The frontend's tier: tier:<frontend host>, else "default"; an unknown name falls back too.
local wanted = redis.call('GET', tier_prefix .. app)
local tier_name = (wanted and config.tiers[wanted]) and wanted or 'default'
local tier = config.tiers[tier_name]
local tier_known = (not wanted or config.tiers[wanted]) and 1 or 0

local limits = {}
local function add(name, key, spec, enforce)
  local rate, burst = tonumber(spec.rate), tonumber(spec.burst)
  if rate and burst and rate > 0 then
    limits[#limits + 1] = {name = name, key = counters .. key, rate = rate, burst = burst, enforce = enforce}
  end
end
-- Keys name the tier: a plan change starts a fresh budget instead of inheriting a
-- state computed at another rate.
add(tier_name, 'tier:' .. tier_name .. ':' .. app, tier, tier.enforce)
if tier.perIp then
  add('ip', 'ip:' .. tier_name .. ':' .. app .. ':' .. ip, tier.perIp, tier.enforce)
elseif config.perIp then
  add('ip', 'ip::' .. app .. ':' .. ip, config.perIp, true)
end
if config.globalPerIp then
  add('global-ip', 'gip:' .. ip, config.globalPerIp, true)
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local outcome = 1  -- 1 allowed, 0 limited, 2 over a shadow (enforce: false) limit but allowed
local binding = nil
for _, l in ipairs(limits) do
  local interval = 1000000 / l.rate
  local tolerance = interval * l.burst
  local tat = tonumber(redis.call('GET', l.key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - tolerance
  l.quota, l.window = l.burst, math.ceil(tolerance / 1000000)
  if now < allow_at then
    l.allowed = false
    l.remaining = 0
    l.retry = allow_at - now
    l.reset = tat - now
    if l.enforce then
      outcome = 0
    elseif outcome == 1 then
      outcome = 2
    end
  else
    l.allowed = true
    l.new_tat = new_tat
    l.remaining = math.floor((now - allow_at) / interval)
    l.retry = 0
    l.reset = new_tat - now
  end
  if binding == nil or (not l.allowed and binding.allowed) or
     (l.allowed == binding.allowed and l.remaining < binding.remaining) then
    binding = l
  end
end

if outcome ~= 0 then
  for _, l in ipairs(limits) do
    if l.allowed then
      redis.call('SET', l.key, string.format('%.0f', l.new_tat), 'PX', math.ceil(l.reset / 1000) + 1000)
    end
  end
end

-- The binding limit: the one that refused, or the one with the fewest requests left.
local policy, quota, window, remaining, reset, retry_after_ms = '', 0, 0, 0, 0, 0
if binding ~= nil then
  policy, quota, window = binding.name, binding.quota, binding.window
  remaining, reset = binding.remaining, math.ceil(binding.reset / 1000000)
  retry_after_ms = math.ceil(binding.retry / 1000)
end
-- Numbers only (a Lua false would end the array): ratelimit.LimitVerdict.decode reads it.
return {position, frontend, dead,
        {tier_name, outcome, policy, quota, window, remaining, reset, retry_after_ms, tier_known}, routing}
