-- Shared by every event script that frees a signal (a script includes it
-- with the lines '--@include listening' and '--@include give').  The signal
-- goes to the oldest queued waiter that is alive: into the handed hash under
-- the waiter's member, then a notice "<member> <signal> <ticket number>" on
-- the waiter's instance channel "<channel>:<instance>" (same hash tag as the
-- keys).  A waiter is alive while its lease (in leases) runs and while its
-- instance listens on this node (see _listening.lua); a ticket that is not
-- is dropped and the next one tried (a live waiter so skipped is queued
-- again by its renewal).  The hand-off is written before the notice is
-- published, and nothing is published for a ticket that is skipped, so a
-- notice, wherever it is heard, always names a signal really handed over.
-- With no live waiter the signal goes to the list: at its head (``head``: a
-- signal handed back, which was set first) or at its tail.
-- The queue, the leases and the handed hash have no TTL, as the list has
-- none: a signal handed to a waiter that died stays there until a waiter
-- of the event comes back and its script hands it on (``reap``); each of
-- them removes the entries it settles, so nothing is left behind by waits
-- that end.
local function give(signals, waiters, leases, handed, channel, signal, now, head)
  while true do
    local first = redis.call('ZPOPMIN', waiters)
    if #first == 0 then
      break
    end
    local member = first[1]
    local lease = redis.call('ZSCORE', leases, member)
    if lease and tonumber(lease) > now and redis.call('HEXISTS', handed, member) == 0 then
      local instance = string.match(member, '^(.*)%.[^.]*$') or member
      local target = channel .. ':' .. instance
      if listening(target) then
        redis.call('HSET', handed, member, signal)
        local number = string.format('%d', tonumber(first[2]))
        redis.pcall('SPUBLISH', target, member .. ' ' .. signal .. ' ' .. number)
        return member
      end
    end
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
