-- Return one held permit to the pool, exactly once.
-- KEYS[1] meta   KEYS[2] pool   KEYS[3] the holder's slot (list)
-- ARGV[1] token   ARGV[2] the token's generation   ARGV[3] ttl in ms
-- Returns 1 released, 0 not held (reclaimed or already released),
-- -1 the semaphore is gone (it is re-established without this token),
-- -2 the semaphore now belongs to another generation.
local gen = redis.call('HGET', KEYS[1], 'gen')
local removed = redis.call('LREM', KEYS[3], 1, ARGV[1])
if not gen then
  return -1
end
if gen ~= ARGV[2] then
  return -2
end
if removed == 0 then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
