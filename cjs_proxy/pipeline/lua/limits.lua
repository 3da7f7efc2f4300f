-- The rate limiter's decision, shared by route.lua (route and limits in one call) and
-- limit.lua (limits only, for a route the worker has cached). Not a script by itself:
-- cjs_proxy/pipeline/store.py puts it in front of either.
--
-- decide(app, tier_prefix, counters, ip, config): app is the frontend's host key (as in
-- frontend:<app>), the prefixes come from cjs_proxy/pipeline/redis_keys.py, ip is the
-- client's address and config the limits (see route.lua's header). Returns the verdict,
-- {tier_name, outcome, policy, quota, window, remaining, reset, retry_after_ms,
-- tier_known}, in the order of ratelimit.VERDICT_FIELDS.
--
-- Limits are GCRA: one key per limit holding the theoretical arrival time in
-- microseconds of Redis TIME, so proxy clocks do not matter and memory is O(1) per key.
local function decide(app, tier_prefix, counters, ip, config)
  if redis.replicate_commands then
    redis.replicate_commands()  -- TIME before writes: replicate effects (Redis < 5 default)
  end
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
  return {tier_name, outcome, policy, quota, window, remaining, reset, retry_after_ms, tier_known}
end
