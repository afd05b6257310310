-- A queued wait took the notice of a signal handed to its member: deliver
-- it (move it from handed to acked, with the wait's id).  Idempotent.
-- KEYS[1] waiters   KEYS[2] leases   KEYS[3] handed   KEYS[4] acked
-- ARGV[1] member   ARGV[2] wait id   ARGV[3] signal   ARGV[4] ack record ttl ms
-- Returns 1 (delivered to this wait) or 0 (not there: the member's lease ran
-- out and the signal went on; the wait goes on).
local member, record = ARGV[1], ARGV[2] .. ' ' .. ARGV[3]
if redis.call('HGET', KEYS[4], member) == record then
  return 1
end
if redis.call('HGET', KEYS[3], member) ~= ARGV[3] then
  return 0
end
redis.call('HDEL', KEYS[3], member)
redis.call('ZREM', KEYS[1], member)
redis.call('ZREM', KEYS[2], member)
redis.call('HSET', KEYS[4], member, record)
redis.call('PEXPIRE', KEYS[4], ARGV[4])
return 1
