-- A writer says it wants the lock, before it queues for the gate: from now
-- on readers queue behind it (writer preference).  Leased like a read.
-- KEYS[1] writers   ARGV[1] writer member   ARGV[2] ttl ms
--@include readers
redis.call('ZADD', KEYS[1], server_ms() + tonumber(ARGV[2]), ARGV[1])
keep(KEYS[1], tonumber(ARGV[2]))
return 1
