-- Resolve a request's frontend, its dead backends and (optionally) its rate limits,
-- in one round trip.
--
-- KEYS[1..n-1]: frontend:<candidate>, in lookup order (exact host, wildcards, '*').
-- KEYS[n]:      dead:<requested host> (Hipache keys dead marks by the requested host).
-- ARGV[1]: "1" to apply rate limits, "0" to only route. With limits:
-- ARGV[2]: key prefix (the driver's #prefix)      ARGV[3]: client IP
-- ARGV[4]: tiers, "name|rate|burst|ipRate|ipBurst|enforce;..." (ipRate/ipBurst empty:
--          the per-IP default below; enforce "1" or "0"); the first is "default"
-- ARGV[5]: per-IP default "rate|burst" or ""      ARGV[6]: global per-IP "rate|burst" or ""
--
-- Returns {0} when no candidate holds a non-empty list. Otherwise
-- {position (1-based), frontend list, dead ids} and, with limits,
-- {..., tier, verdict, policy, quota, window_s, remaining, reset_s, retry_after_ms, tier_known}
-- where verdict is 1 allowed, 0 limited, 2 over a shadow (enforce: false) limit but allowed.
--
-- Limits are GCRA: one key per limit holding the theoretical arrival time in
-- microseconds of Redis TIME, so proxy clocks do not matter and memory is O(1) per key.
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
if ARGV[1] ~= '1' then
  return {position, frontend, dead}
end

if redis.replicate_commands then
  redis.replicate_commands()  -- TIME before writes: replicate effects (Redis < 5 default)
end
local prefix, ip = ARGV[2], ARGV[3]
local app = string.sub(KEYS[position], #prefix + #'frontend:' + 1)

local function split(text, sep)
  local fields, start = {}, 1
  while true do
    local i = string.find(text, sep, start, true)
    if not i then
      fields[#fields + 1] = string.sub(text, start)
      return fields
    end
    fields[#fields + 1] = string.sub(text, start, i - 1)
    start = i + 1
  end
end

-- The frontend's tier: tier:<frontend host>, else "default"; an unknown name falls back too.
local wanted = redis.call('GET', prefix .. 'tier:' .. app)
local tiers, first = {}, nil
for _, spec in ipairs(split(ARGV[4], ';')) do
  local f = split(spec, '|')
  tiers[f[1]] = f
  first = first or f
end
local tier = (wanted and tiers[wanted]) or tiers['default'] or first
local tier_known = (not wanted or tiers[wanted]) and 1 or 0

local limits = {}
local function add(name, key, rate, burst, enforce)
  rate, burst = tonumber(rate), tonumber(burst)
  if rate and burst and rate > 0 then
    limits[#limits + 1] = {name = name, key = prefix .. key, rate = rate, burst = burst, enforce = enforce}
  end
end
local enforce = tier[6] == '1'
-- Keys name the tier: a plan change starts a fresh budget instead of inheriting a
-- state computed at another rate.
add(tier[1], 'rl:tier:' .. tier[1] .. ':' .. app, tier[2], tier[3], enforce)
if tier[4] ~= '' then
  add('ip', 'rl:ip:' .. tier[1] .. ':' .. app .. ':' .. ip, tier[4], tier[5], enforce)
elseif ARGV[5] ~= '' then
  local d = split(ARGV[5], '|')
  add('ip', 'rl:ip::' .. app .. ':' .. ip, d[1], d[2], true)
end
if ARGV[6] ~= '' then
  local g = split(ARGV[6], '|')
  add('global-ip', 'rl:gip:' .. ip, g[1], g[2], true)
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local verdict = 1
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
      verdict = 0
    elseif verdict == 1 then
      verdict = 2
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

if verdict ~= 0 then
  for _, l in ipairs(limits) do
    if l.allowed then
      redis.call('SET', l.key, string.format('%.0f', l.new_tat), 'PX', math.ceil(l.reset / 1000) + 1000)
    end
  end
end

if binding == nil then
  return {position, frontend, dead, tier[1], verdict, '', 0, 0, 0, 0, 0, tier_known}
end
return {position, frontend, dead, tier[1], verdict, binding.name, binding.quota, binding.window,
        binding.remaining, math.ceil(binding.reset / 1000000), math.ceil(binding.retry / 1000), tier_known}
