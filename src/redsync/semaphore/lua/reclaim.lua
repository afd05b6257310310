-- Hand on the permits of expired holders (to queued waiters, else to the
-- pool); keep the slots of holders that are late but not yet expired alive
-- until they are.  An expired holder whose slot is already gone (it expired
-- before anyone got here) may have held a permit nobody can see any more:
-- open a recovery window, at whose end the permits found nowhere are
-- re-created.
-- KEYS[1] meta   KEYS[2] pool   KEYS[3] holders   KEYS[4] waiters   KEYS[5] handed
-- KEYS[5+i] slot of member i
-- ARGV[1] ttl ms   ARGV[2] generation   ARGV[3] n   ARGV[3+i] member i
-- ARGV[4+n] recovery window ms   ARGV[5+n] the semaphore's channel
-- Returns the number of permits handed on, or -1 if the generation differs.
--@include listening
--@include live
--@include fence
--@include give
local ttl = tonumber(ARGV[1])
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[2] then
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[3])
local channel = ARGV[5 + n]
local prefix = ARGV[2] .. ':'
local returned = 0
for i = 1, n do
  local key = KEYS[5 + i]
  local member = ARGV[3 + i]
  local score = redis.call('ZSCORE', KEYS[3], member)
  if score then
    if tonumber(score) <= now then
      if redis.call('EXISTS', key) == 0
          and tonumber(redis.call('HGET', KEYS[1], 'recover') or '0') == 0 then
        redis.call('HSET', KEYS[1], 'recover', now + tonumber(ARGV[4 + n]))
      end
      local tokens = redis.call('LRANGE', key, 1, -1)
      local handed = redis.call('HGET', KEYS[5], member)
      if handed then
        tokens[#tokens + 1] = handed
        redis.call('HDEL', KEYS[5], member)
      end
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[3], member)
      redis.call('ZREM', KEYS[4], member)
      for _, token in ipairs(tokens) do
        if string.sub(token, 1, #prefix) == prefix then
          give(KEYS[2], KEYS[3], KEYS[4], KEYS[5], channel, token, now, ttl)
          returned = returned + 1
        end
      end
    else
      redis.call('PEXPIRE', key, ttl)
    end
  end
end
return returned
