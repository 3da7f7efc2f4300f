-- Resolve a request's frontend and its dead backends in one round trip.
--
-- KEYS[1..n-1]: frontend:<candidate>, in lookup order (exact host, wildcards, '*').
-- KEYS[n]:      dead:<requested host> (Hipache keys dead marks by the requested host).
--
-- Returns {0} when no candidate holds a non-empty list, otherwise
-- {position of the matching key (1-based), the frontend list, the dead backend ids}.
local last = #KEYS
for i = 1, last - 1 do
  local frontend = redis.call('LRANGE', KEYS[i], 0, -1)
  if #frontend > 0 then
    return {i, frontend, redis.call('SMEMBERS', KEYS[last])}
  end
end
return {0}
