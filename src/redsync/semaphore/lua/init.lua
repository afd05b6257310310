-- Create the semaphore if it does not exist, atomically; otherwise report it.
-- KEYS[1] meta (hash)   KEYS[2] pool (list)   KEYS[3] holders (zset)
-- KEYS[4] waiters (zset)   KEYS[5] handed (hash)
-- ARGV[1] count   ARGV[2] ttl in ms   ARGV[3] generation id   ARGV[4] strategy
-- Returns {count, generation, strategy, created (1 or 0)}.
local meta = redis.call('HMGET', KEYS[1], 'count', 'gen', 'strategy')
if meta[1] then
  return {meta[1], meta[2], meta[3] or 'lua', 0}
end
local count = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
-- Leftovers of a semaphore whose metadata is gone belong to no generation
-- anyone can still release into: start clean.
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
local batch = {}
for i = 0, count - 1 do
  batch[#batch + 1] = ARGV[3] .. ':' .. i
  if #batch == 512 then
    redis.call('RPUSH', KEYS[2], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then
  redis.call('RPUSH', KEYS[2], unpack(batch))
end
redis.call('HSET', KEYS[1], 'count', ARGV[1], 'gen', ARGV[3], 'strategy', ARGV[4], 'recover', '0')
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return {ARGV[1], ARGV[3], ARGV[4], 1}
