-- Forget the slots of an instance that hold no permit (and wait for none).
-- KEYS[1] holders   KEYS[2] waiters   KEYS[3] handed   KEYS[3+i] slot of member i
-- ARGV[i] member i
local removed = 0
for i = 1, #ARGV do
  if redis.call('LLEN', KEYS[3 + i]) <= 1 and redis.call('HEXISTS', KEYS[3], ARGV[i]) == 0 then
    redis.call('DEL', KEYS[3 + i])
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    removed = removed + 1
  end
end
return removed
