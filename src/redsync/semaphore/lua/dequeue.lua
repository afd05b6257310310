-- A waiting acquisition gives up (timeout, cancellation, close): drop its
-- ticket and report what its slot holds.  Idempotent.
-- KEYS[1] waiters   KEYS[2] handed   KEYS[3] slot
-- ARGV[1] member
-- Returns the token handed to (or taken into) the slot meanwhile, or nil.
redis.call('ZREM', KEYS[1], ARGV[1])
local handed = redis.call('HGET', KEYS[2], ARGV[1])
if handed then
  return handed
end
return redis.call('LINDEX', KEYS[3], 1)
