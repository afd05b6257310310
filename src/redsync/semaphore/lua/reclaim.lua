-- Return the permits of expired holders to the pool; keep the slots of
-- holders that are late but not yet expired alive until they are.
-- An expired holder whose slot is already gone (it expired before anyone
-- got here) may have held a permit nobody can see any more: open a
-- recovery window, at whose end the permits found nowhere are re-created.
-- KEYS[1] meta   KEYS[2] pool   KEYS[3] holders   KEYS[3+i] slot of member i
-- ARGV[1] ttl ms   ARGV[2] generation   ARGV[3] n   ARGV[3+i] member i
-- ARGV[4+n] recovery window ms
-- Returns the number of permits returned, or -1 if the generation differs.
local ttl = tonumber(ARGV[1])
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[2] then
  return -1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix = ARGV[2] .. ':'
local returned = 0
for i = 1, tonumber(ARGV[3]) do
  local key = KEYS[3 + i]
  local member = ARGV[3 + i]
  local score = redis.call('ZSCORE', KEYS[3], member)
  if score then
    if tonumber(score) <= now then
      if redis.call('EXISTS', key) == 0
          and tonumber(redis.call('HGET', KEYS[1], 'recover') or '0') == 0 then
        redis.call('HSET', KEYS[1], 'recover', now + tonumber(ARGV[4 + tonumber(ARGV[3])]))
      end
      local tokens = redis.call('LRANGE', key, 1, -1)
      for _, token in ipairs(tokens) do
        if string.sub(token, 1, #prefix) == prefix then
          redis.call('RPUSH', KEYS[2], token)
          returned = returned + 1
        end
      end
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[3], member)
    else
      redis.call('PEXPIRE', key, ttl)
    end
  end
end
if returned > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return returned
