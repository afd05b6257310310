-- A read hold without passing the gate: only while no writer wants the lock
-- (no live entry in writers: a writer registers there before it queues for
-- the gate, and leaves once it is done), and while the gate's keys are in
-- place and not recovering (after a loss, a writer that held the gate may
-- not have registered again yet).  Otherwise the reader queues in the gate.
-- KEYS[1] readers   KEYS[2] writers   KEYS[3] the gate's meta
-- ARGV[1] member   ARGV[2] ttl ms
-- Returns 1 if the read is held, 0 if the reader must pass the gate.
--@include readers
local now = server_ms()
if redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf') > 0 then
  return 0
end
if redis.call('HGET', KEYS[3], 'recover') ~= '0' then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
keep(KEYS[1], tonumber(ARGV[2]))
return 1
