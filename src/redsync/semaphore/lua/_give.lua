-- Shared by every script that frees a permit token (a script includes it
-- with the lines '--@include listening', '--@include live', '--@include
-- fence' and '--@include give').  The token goes to the oldest queued waiter that is
-- alive (see _live.lua; a waiter's lease is its score in holders): into the
-- handed hash under the waiter's member, and only then a notice
-- "<member> <token> <ticket number>" on the waiter's instance channel
-- "<channel>:<instance>" (in the semaphore's slot: same hash tag), so a
-- notice never names a hand-off that was not made (a subscriber on a
-- replica also hears what the master publishes, without being counted).
-- With no live waiter it goes to the pool.
-- ``now`` (server ms) may be nil: it is read when a ticket is met.
-- ``mine`` (may be nil): the member prefix "<instance>." of the caller.  A
-- hand-off to a member of the caller's own instance is not published: the
-- notice is returned for the caller to deliver itself, which spares the
-- server a publish and the caller a message (the token is in handed all the
-- same, so a lost reply costs latency, as a lost notice does).
-- ``fence_key`` (may be nil): the semaphore is a lock's, and a hand-off
-- issues the new holder's fence (see _fence.lua) and appends it to the
-- notice, sparing the new holder a round trip to ask for it.
-- Returns the member the token was handed to (or false: pooled), and the
-- notice not published (or nil).
local function give(pool, holders, waiters, handed, channel, token, now, ttl, mine, fence_key)
  local member, number, target = next_live(waiters, holders, handed, channel, now, mine)
  if not member then
    redis.call('RPUSH', pool, token)
    redis.call('PEXPIRE', pool, ttl)
    return false
  end
  redis.call('HSET', handed, member, token)
  redis.call('PEXPIRE', handed, ttl)
  local notice = member .. ' ' .. token .. ' ' .. number
  if fence_key then
    notice = notice .. ' ' .. next_fence(fence_key)
  end
  if not target then
    return member, notice
  end
  redis.pcall('SPUBLISH', target, notice)
  return member, nil
end
