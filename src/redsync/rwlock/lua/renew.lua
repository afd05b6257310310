-- Renew one instance's read holds and writer entries.  A read still
-- registered is renewed, even if its lease ran out meanwhile: no writer
-- drained the lock past it (a drain drops it first).  A read found missing
-- was dropped: lost, unless the lock's keys were lost (meta gone, or the
-- gate in its recovery window), in which case it is registered again: no
-- writer can have drained the lock since, as the gate keeps writers out
-- until the window ends.  A writer entry is renewed, or registered again
-- if its writer only waits (or the keys were lost); the entry of a writer
-- that holds the lock is lost once it expired or vanished (readers may have
-- entered since).
-- KEYS[1] readers   KEYS[2] the gate's meta   KEYS[3] writers
-- ARGV[1] ttl ms   ARGV[2] number of reads k   ARGV[3..2+k] read members
-- then pairs: writer member, 'h' (holds the lock) or 'w' (waits)
-- Returns the members lost.
--@include readers
local ttl = tonumber(ARGV[1])
local k = tonumber(ARGV[2])
local now = server_ms()
local recover = redis.call('HGET', KEYS[2], 'recover')
local restoring = not recover or tonumber(recover) ~= 0
local lost = {}
for i = 3, 2 + k do
  local member = ARGV[i]
  if redis.call('ZSCORE', KEYS[1], member) or restoring then
    redis.call('ZADD', KEYS[1], now + ttl, member)
  else
    lost[#lost + 1] = member
  end
end
if k > 0 then
  keep(KEYS[1], ttl)
end
local any_writer = false
for i = 3 + k, #ARGV, 2 do
  local member = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[3], member)
  if ARGV[i + 1] == 'w' or restoring or (score and tonumber(score) > now) then
    redis.call('ZADD', KEYS[3], now + ttl, member)
    any_writer = true
  else
    -- Expired (readers no longer saw it) or gone: readers may be in.
    redis.call('ZREM', KEYS[3], member)
    lost[#lost + 1] = member
  end
end
if any_writer then
  keep(KEYS[3], ttl)
end
return lost
