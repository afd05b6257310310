-- End the recovery window after the semaphore was re-established: mint the
-- permits that no registered lane and no pool entry accounts for.
-- KEYS[1] meta   KEYS[2] pool   KEYS[3] holders   KEYS[3+i] lane of member i
-- ARGV[1] ttl ms   ARGV[2] count   ARGV[3] generation   ARGV[4] n
-- ARGV[4+i] member i (the caller lists every member of holders)
-- Returns the number minted, 0 if not in recovery, -1 on another
-- generation, -2 if the member list is out of date (list again and retry).
local meta = redis.call('HMGET', KEYS[1], 'gen', 'recover')
if meta[1] ~= ARGV[3] then
  return -1
end
if tonumber(meta[2] or '0') == 0 then
  return 0
end
local n = tonumber(ARGV[4])
if redis.call('ZCARD', KEYS[3]) ~= n then
  return -2
end
local present = {}
for _, token in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  present[token] = true
end
for i = 1, n do
  if not redis.call('ZSCORE', KEYS[3], ARGV[4 + i]) then
    return -2
  end
  for _, token in ipairs(redis.call('LRANGE', KEYS[3 + i], 1, -1)) do
    present[token] = true
  end
end
local minted = 0
for i = 0, tonumber(ARGV[2]) - 1 do
  local token = ARGV[3] .. ':' .. i
  if not present[token] then
    redis.call('RPUSH', KEYS[2], token)
    minted = minted + 1
  end
end
redis.call('HSET', KEYS[1], 'recover', '0')
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]))
return minted
