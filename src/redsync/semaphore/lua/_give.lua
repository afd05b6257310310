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
-- Returns the member the token was handed to, or false (pooled).
local function give(pool, holders, waiters, handed, channel, token, now, ttl)
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
      local number = string.format('%d', tonumber(head[2]))
      redis.pcall('SPUBLISH', channel, member .. ' ' .. token .. ' ' .. number)
      return member
    end
  end
  redis.call('RPUSH', pool, token)
  redis.call('PEXPIRE', pool, ttl)
  return false
end
