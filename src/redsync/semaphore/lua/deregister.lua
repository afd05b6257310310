-- Forget the slots of a closing instance that hold no permit.
-- KEYS[1] holders   KEYS[1+i] slot of member i
-- ARGV[i] member i
local removed = 0
for i = 1, #ARGV do
  if redis.call('LLEN', KEYS[1 + i]) <= 1 then
    redis.call('DEL', KEYS[1 + i])
    redis.call('ZREM', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
