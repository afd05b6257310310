-- End the recovery window after the semaphore was re-established: mint the
-- permits that no registered slot and no pool entry accounts for.
-- KEYS[1] meta   KEYS[2] pool   KEYS[3] holders   KEYS[4] waiters   KEYS[5] handed
-- KEYS[5+i] slot of member i
-- ARGV[1] ttl ms   ARGV[2] count   ARGV[3] generation   ARGV[4] n
-- ARGV[4+i] member i (the caller lists every member of holders)
-- ARGV[5+n] recovery window ms   ARGV[6+n] the semaphore's channel
-- Returns the number minted, 0 if not in recovery or the window has not ended
-- yet, -1 on another generation, -2 if the member list is out of date (list
-- again and retry), -3 if a registered member has not renewed since the
-- window opened (try again later: it may hold a permit it has yet to put back).
--@include listening
--@include live
--@include fence
--@include give
local meta = redis.call('HMGET', KEYS[1], 'gen', 'recover')
if meta[1] ~= ARGV[3] then
  return -1
end
local recover = tonumber(meta[2] or '0')
if recover == 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if recover > now then
  -- Another window than the one the caller saw end (that one was closed and
  -- a new one opened since): it has yet to run its course.
  return 0
end
local ttl = tonumber(ARGV[1])
local n = tonumber(ARGV[4])
local window = tonumber(ARGV[5 + n] or '0')
local channel = ARGV[6 + n] or ''
if redis.call('ZCARD', KEYS[3]) ~= n then
  return -2
end
-- A renewal at time r registers its slots until r + ttl: a member whose lease
-- ends before opened + ttl has not renewed since the window opened.  It may
-- be a live instance whose renewal is late (stuck behind a failover, backing
-- off) and that puts a permit back on that renewal: minting it now would
-- make it exist twice.  Wait until every registered member has renewed, or
-- has been reclaimed once its lease ran out (its slot then tells what it held).
local opened = recover - window
local present = {}
for _, token in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  present[token] = true
end
for _, token in ipairs(redis.call('HVALS', KEYS[5])) do
  present[token] = true
end
local waiting = false
for i = 1, n do
  local score = redis.call('ZSCORE', KEYS[3], ARGV[4 + i])
  if not score then
    return -2
  end
  if window > 0 and tonumber(score) < opened + ttl then
    waiting = true
  end
  for _, token in ipairs(redis.call('LRANGE', KEYS[5 + i], 1, -1)) do
    present[token] = true
  end
end
if waiting then
  return -3
end
local minted = 0
for i = 0, tonumber(ARGV[2]) - 1 do
  local token = ARGV[3] .. ':' .. i
  if not present[token] then
    give(KEYS[2], KEYS[3], KEYS[4], KEYS[5], channel, token, now, ttl)
    minted = minted + 1
  end
end
redis.call('HSET', KEYS[1], 'recover', '0')
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return minted
