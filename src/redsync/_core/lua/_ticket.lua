-- A ticket's number (a script includes it with '--@include ticket'): the
-- server time in microseconds, raised above the last number given (kept in
-- meta 'seq'), so numbers follow arrival order and no two waits share one,
-- not even across a restart that lost meta (the clock has moved on).  The
-- number names the wait: a hand-off's notice carries it, and a waiter takes
-- a notice only if it names its current wait, so a late notice of an earlier
-- wait on the same slot is ignored.  Formatted as a plain integer.
local function ticket_number(meta)
  local t = redis.call('TIME')
  local n = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('HGET', meta, 'seq') or '0')
  if n <= last then
    n = last + 1
  end
  local s = string.format('%d', n)
  redis.call('HSET', meta, 'seq', s)
  return s
end
