-- Return one held permit exactly once: to the oldest live waiter, else to
-- the pool.  The token is in the holder's slot list, or in the handed hash
-- under the holder's member (it was handed over there).
-- KEYS[1] meta   KEYS[2] pool   KEYS[3] the holder's slot (list)
-- KEYS[4] holders   KEYS[5] waiters   KEYS[6] handed
-- KEYS[7] (a lock's only) its fence key: a hand-off issues the next fence
-- ARGV[1] token   ARGV[2] the token's generation   ARGV[3] ttl in ms
-- ARGV[4] the holder's member   ARGV[5] the semaphore's channel
-- ARGV[6] the holder's member prefix "<instance>." (see give)
-- Returns {1} released, {1, notice} released and handed to a waiter of the
-- same instance (the notice it was not sent), {0} not held (reclaimed or
-- already released), {-1} the semaphore is gone (it is re-established
-- without this token), {-2} the semaphore now belongs to another generation.
--@include listening
--@include live
--@include fence
--@include give
local gen = redis.call('HGET', KEYS[1], 'gen')
local removed = redis.call('LREM', KEYS[3], 1, ARGV[1])
if removed == 0 and redis.call('HGET', KEYS[6], ARGV[4]) == ARGV[1] then
  redis.call('HDEL', KEYS[6], ARGV[4])
  removed = 1
end
if not gen then
  return {-1}
end
if gen ~= ARGV[2] then
  return {-2}
end
if removed == 0 then
  return {0}
end
local _, notice = give(KEYS[2], KEYS[4], KEYS[5], KEYS[6], ARGV[5], ARGV[1], nil,
  tonumber(ARGV[3]), ARGV[6], KEYS[7])
if notice then
  return {1, notice}
end
return {1}
