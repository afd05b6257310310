-- A writer that holds the gate waits for the reads already in to end.
-- Drops reads whose lease ran out.  While reads remain, records the
-- writer's channel in the drain key, so the last leaving read tells it.
-- After the lock's keys were lost (meta gone, or the gate in its recovery
-- window) live readers may not have re-registered yet: the writer waits.
-- KEYS[1] readers   KEYS[2] drain   KEYS[3] the gate's meta
-- ARGV[1] "<channel> <drain id>"   ARGV[2] ttl ms
-- Returns {live reads, ms until the earliest of their leases runs out (or
-- the recovery window ends)}; {0, 0}: the writer is in.
--@include readers
local ttl = tonumber(ARGV[2])
local now = server_ms()
local recover = redis.call('HGET', KEYS[3], 'recover')
local n = live_readers(KEYS[1], now)
local wait = 0
if not recover then
  wait = math.floor(ttl / 3)
elseif tonumber(recover) ~= 0 then
  wait = math.max(1, tonumber(recover) - now)
end
if n == 0 and wait == 0 then
  redis.call('DEL', KEYS[2])
  return {0, 0}
end
if n > 0 then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local left = math.max(1, tonumber(first[2]) - now)
  if wait == 0 or left < wait then
    wait = left
  end
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl)
return {n, wait}
