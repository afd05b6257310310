-- Renew one instance's read holds.  A read still registered is renewed,
-- even if its lease ran out meanwhile: no writer drained the lock past it
-- (a drain drops it first).  A read found missing was dropped: lost, unless
-- the lock's keys were lost (meta gone, or the gate in its recovery
-- window), in which case it is registered again: no writer can have drained
-- the lock since, as the gate keeps writers out until the window ends.
-- KEYS[1] readers   KEYS[2] the gate's meta
-- ARGV[1] ttl ms   ARGV[2..] read members
-- Returns the members lost.
--@include readers
local ttl = tonumber(ARGV[1])
local now = server_ms()
local recover = redis.call('HGET', KEYS[2], 'recover')
local restoring = not recover or tonumber(recover) ~= 0
local lost = {}
for i = 2, #ARGV do
  local member = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], member)
  if score or restoring then
    redis.call('ZADD', KEYS[1], now + ttl, member)
  else
    lost[#lost + 1] = member
  end
end
keep(KEYS[1], ttl)
return lost
