-- Replace a dead set with the health checker's view, atomically.
-- KEYS[1]: dead:<host>    ARGV[1]: TTL seconds    ARGV[2..]: dead backend ids (none: delete)
redis.call('DEL', KEYS[1])
if #ARGV > 1 then
  redis.call('SADD', KEYS[1], unpack(ARGV, 2))
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return #ARGV - 1
