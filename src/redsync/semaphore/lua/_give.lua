-- Shared by every script that frees a permit token (a script includes it
-- with the line '--@include give').  The token goes to the oldest queued
-- waiter whose lease is live: into the handed hash under the waiter's
-- member, with a notice "<member> <token> <ticket number>" on the
-- semaphore's channel.
-- With no live waiter it goes to the pool.  Tickets of dead waiters met on
-- the way are dropped (their slots are reclaimed with their lease).
-- Publishing uses pcall: a user without channel rights loses the notice,
-- never the hand-off (the owner's renewal finds the token).
-- ``now`` (server ms) may be nil: it is read when a ticket is met.
-- ``mine`` (may be nil): the member prefix "<instance>." of the caller.  A
-- hand-off to a member of the caller's own instance is not published: the
-- notice is returned for the caller to deliver itself, which spares the
-- server a publish and the caller a message (the token is in handed all the
-- same, so a lost reply costs latency, as a lost notice does).
-- Returns the member the token was handed to (or false: pooled), and the
-- notice not published (or nil).
local function give(pool, holders, waiters, handed, channel, token, now, ttl, mine)
  while true do
    local head = redis.call('ZPOPMIN', waiters)
    if #head == 0 then
      break
    end
    local member = head[1]
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    local lease = redis.call('ZSCORE', holders, member)
    if lease and tonumber(lease) > now and redis.call('HEXISTS', handed, member) == 0 then
      redis.call('HSET', handed, member, token)
      redis.call('PEXPIRE', handed, ttl)
      local notice = member .. ' ' .. token .. ' ' .. string.format('%d', tonumber(head[2]))
      if mine and string.sub(member, 1, #mine) == mine then
        return member, notice
      end
      redis.pcall('SPUBLISH', channel, notice)
      return member, nil
    end
  end
  redis.call('RPUSH', pool, token)
  redis.call('PEXPIRE', pool, ttl)
  return false
end
