-- A read hold without passing the gate: only while the gate is free (its
-- token lies in its pool) and nobody queues for it, so no writer holds the
-- lock, drains it or waits for it.  Otherwise the reader queues in the gate.
-- KEYS[1] readers   KEYS[2] the gate's pool   KEYS[3] the gate's waiters
-- ARGV[1] member   ARGV[2] ttl ms
-- Returns 1 if the read is held, 0 if the reader must pass the gate.
--@include readers
if redis.call('LLEN', KEYS[2]) == 0 or redis.call('ZCARD', KEYS[3]) > 0 then
  return 0
end
redis.call('ZADD', KEYS[1], server_ms() + tonumber(ARGV[2]), ARGV[1])
keep(KEYS[1], tonumber(ARGV[2]))
return 1
