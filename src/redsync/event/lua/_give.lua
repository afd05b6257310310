-- Shared by every event script that frees a signal (a script includes it
-- with the lines '--@include listening', '--@include live' and
-- '--@include give').  The signal goes to the oldest queued waiter that is
-- alive (see _live.lua): into the handed hash under the waiter's member,
-- then a notice "<member> <signal> <ticket number>" on the waiter's
-- instance channel "<channel>:<instance>" (same hash tag as the keys).  The
-- hand-off is written before the notice is published, and nothing is
-- published for a ticket that is skipped, so a notice, wherever it is
-- heard, always names a signal really handed over.
-- With no live waiter the signal goes to the list: at its head (``head``: a
-- signal handed back, which was set first) or at its tail.
-- The queue, the leases and the handed hash have no TTL, as the list has
-- none: a signal handed to a waiter that died stays there until a waiter
-- of the event comes back and its script hands it on (``reap``); each of
-- them removes the entries it settles, so nothing is left behind by waits
-- that end.
local function give(signals, waiters, leases, handed, channel, signal, now, head)
  local member, number, target = next_live(waiters, leases, handed, channel, now, nil)
  if member then
    redis.call('HSET', handed, member, signal)
    redis.pcall('SPUBLISH', target, member .. ' ' .. signal .. ' ' .. number)
    return member
  end
  if head then
    redis.call('LPUSH', signals, signal)
  else
    redis.call('RPUSH', signals, signal)
  end
  return false
end

-- Hand on the signals of waiters whose lease ran out (their process died or
-- stalled for longer than the lease): at most ``limit`` of them.
local function reap(signals, waiters, leases, handed, channel, now, limit)
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(expired) do
    local signal = redis.call('HGET', handed, member)
    redis.call('HDEL', handed, member)
    redis.call('ZREM', waiters, member)
    redis.call('ZREM', leases, member)
    if signal then
      give(signals, waiters, leases, handed, channel, signal, now, true)
    end
  end
end
