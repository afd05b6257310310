-- A read hold for a caller that holds the gate (a reader that queued, or a
-- writer downgrading): registered only while the caller's gate token is
-- still in its slot (or handed to its member), so a read never joins beside
-- a writer that took the gate after the caller's lease ran out.
-- KEYS[1] readers   KEYS[2] the caller's gate slot   KEYS[3] the gate's handed
-- ARGV[1] read member   ARGV[2] ttl ms   ARGV[3] gate member   ARGV[4] gate token
-- Returns 1 if the read is held, 0 if the gate is no longer the caller's.
--@include readers
if not redis.call('LPOS', KEYS[2], ARGV[4])
    and redis.call('HGET', KEYS[3], ARGV[3]) ~= ARGV[4] then
  return 0
end
redis.call('ZADD', KEYS[1], server_ms() + tonumber(ARGV[2]), ARGV[1])
keep(KEYS[1], tonumber(ARGV[2]))
return 1
