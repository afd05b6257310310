-- One signal: to the oldest live queued waiter, else onto the list.
-- Exactly once, even when retried after a lost reply: the push record (a
-- key named by the caller for this set()) says it happened.
-- KEYS[1] signals   KEYS[2] waiters   KEYS[3] leases   KEYS[4] handed
-- KEYS[5] the push record
-- ARGV[1] signal   ARGV[2] the event's channel   ARGV[3] push record ttl ms
-- ARGV[4] '1': to the head of the list (a signal handed back), '0': to its
-- tail
-- Returns 1, or 0 when the record shows an earlier attempt went through.
--@include listening
--@include live
--@include give
if redis.call('EXISTS', KEYS[5]) == 1 then
  return 0
end
redis.call('SET', KEYS[5], 1, 'PX', ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
give(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[1], now, ARGV[4] == '1')
return 1
