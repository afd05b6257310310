-- The readers of a read-write lock (a script includes it with '--@include
-- readers').  ``readers`` is a zset: member = one read hold
-- "<instance>.<n>", score = its lease deadline in server ms.  Every write
-- keeps the key's TTL at least ``ttl`` (instances may use different leases).
local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function keep(key, ttl)
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end

-- Drop the reads whose lease ran out (their holders died or stalled), and
-- return how many are left.
local function live_readers(readers, now)
  redis.call('ZREMRANGEBYSCORE', readers, '-inf', now)
  return redis.call('ZCARD', readers)
end
