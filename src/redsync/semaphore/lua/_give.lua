-- Shared by every script that frees a permit token (a script includes it
-- with the lines '--@include listening' and '--@include give').  The token
-- goes to the oldest queued waiter that is alive: into the handed hash
-- under the waiter's member, with a notice "<member> <token> <ticket number>"
-- on the waiter's instance channel "<channel>:<instance>" (in the
-- semaphore's slot: same hash tag).
-- With no live waiter it goes to the pool.
-- A waiter is alive while its lease is and while its instance listens on its
-- channel on this node: PUBSUB SHARDNUMSUB counts the connections subscribed
-- here, and none means the process is gone (its connections closed with it)
-- or its listener is elsewhere (reconnecting, or left on a node that is a
-- replica now); the ticket is dropped and the next one tried, so a dead
-- process absorbs no permit.  A live waiter so skipped is queued again under
-- the same number by its next renewal, which also reports that nobody
-- listens here (see renew.lua), so that its listener moves.
-- The count is taken before anything is published, and a notice is
-- published only for a hand-off already written: a subscriber on a replica
-- also hears what the master publishes (the shard forwards it) without being
-- counted, so a notice must never name a hand-off that was then undone.  A
-- count that fails (no rights) counts as listening: the owner's renewal
-- finds the token.
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
      local notice = member .. ' ' .. token .. ' ' .. string.format('%d', tonumber(head[2]))
      local own = mine and string.sub(member, 1, #mine) == mine
      local target = nil
      if not own then
        local instance = string.match(member, '^(.*)%.[^.]*$') or member
        target = channel .. ':' .. instance
      end
      if own or listening(target) then
        redis.call('HSET', handed, member, token)
        redis.call('PEXPIRE', handed, ttl)
        if own then
          return member, notice
        end
        redis.pcall('SPUBLISH', target, notice)
        return member, nil
      end
    end
  end
  redis.call('RPUSH', pool, token)
  redis.call('PEXPIRE', pool, ttl)
  return false
end
