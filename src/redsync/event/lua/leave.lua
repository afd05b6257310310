-- A wait ends without a notice taken (timeout, cancellation, close, or a
-- step whose outcome is unknown): drop its ticket and lease, and settle a
-- signal that reached it meanwhile.  ``keep`` '1': deliver it to this wait
-- (it is returned); '0': hand it on, and also a signal already delivered
-- to this wait (acked with its id) that never reached its caller.
-- Idempotent.
-- KEYS[1] signals   KEYS[2] waiters   KEYS[3] leases   KEYS[4] handed
-- KEYS[5] acked
-- ARGV[1] member   ARGV[2] wait id   ARGV[3] keep   ARGV[4] the event's
-- channel   ARGV[5] ack record ttl ms
-- Returns the signal delivered to this wait, or false.
--@include listening
--@include live
--@include give
local member, id = ARGV[1], ARGV[2]
redis.call('ZREM', KEYS[2], member)
redis.call('ZREM', KEYS[3], member)
local signal = nil
local done = redis.call('HGET', KEYS[5], member)
if done and string.sub(done, 1, #id + 1) == id .. ' ' then
  if ARGV[3] == '1' then
    return string.sub(done, #id + 2)
  end
  signal = string.sub(done, #id + 2)
  redis.call('HDEL', KEYS[5], member)
else
  signal = redis.call('HGET', KEYS[4], member)
  if not signal then
    return false
  end
  redis.call('HDEL', KEYS[4], member)
  if ARGV[3] == '1' then
    redis.call('HSET', KEYS[5], member, id .. ' ' .. signal)
    redis.call('PEXPIRE', KEYS[5], ARGV[5])
    return signal
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
give(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[4], signal, now, true)
return false
