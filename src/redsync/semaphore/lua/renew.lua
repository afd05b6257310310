-- One renewal of one instance: renew the lease of its slots and the
-- TTL of the shared keys, re-establish the semaphore if its keys vanished,
-- and report what the instance must act on.
-- KEYS[1] meta   KEYS[2] pool   KEYS[3] holders   KEYS[4] waiters   KEYS[5] handed
-- KEYS[5+i] slot i
-- ARGV[1] ttl ms   ARGV[2] count   ARGV[3] generation   ARGV[4] strategy
-- ARGV[5] recovery window ms   ARGV[6] number of slots n
-- ARGV[7] the instance's channel "<channel>:<instance>" ('' for none)
-- then for each slot: member, mode, k, and the k tokens the instance holds
-- on it; mode 'w<number>': a task waits on this slot as that ticket number
-- (keep its ticket queued: queue it again under the same number if it was
-- dropped, unless a token is there; 'w' alone: the number is not known yet,
-- queue under a new one), 'd': drop any ticket (the wait ended without an
-- answer), '-': nothing.
-- Returns {status, stale members, refill due (0/1), {member, number, ...}
-- of the tickets queued again, listening (0: no connection of this node is
-- subscribed to the instance's channel, see _give.lua; 1 otherwise),
-- contents of slot 1, ...} where status is 'ok', 'restored' or 'stale'
-- ({'stale', count, gen}).  A slot's content is its list (marker removed)
-- and the token handed to its member, if any.
--@include ticket
--@include listening
local ttl = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[6])
local status = 'ok'
local meta = redis.call('HMGET', KEYS[1], 'count', 'gen', 'recover')
if not meta[1] then
  local deadline = now + tonumber(ARGV[5])
  redis.call('HSET', KEYS[1], 'count', ARGV[2], 'gen', ARGV[3], 'strategy', ARGV[4],
    'recover', deadline)
  meta = {ARGV[2], ARGV[3], tostring(deadline)}
  status = 'restored'
elseif meta[1] ~= ARGV[2] or meta[2] ~= ARGV[3] then
  -- The semaphore was re-created under a new generation: what this
  -- instance holds is void.  Drop its slots and registrations.
  local idx = 8
  for i = 1, n do
    redis.call('DEL', KEYS[5 + i])
    redis.call('ZREM', KEYS[3], ARGV[idx])
    redis.call('ZREM', KEYS[4], ARGV[idx])
    redis.call('HDEL', KEYS[5], ARGV[idx])
    idx = idx + 3 + tonumber(ARGV[idx + 2])
  end
  return {'stale', meta[1], meta[2]}
end
local recover = tonumber(meta[3] or '0')
if recover == 0 and redis.call('ZCARD', KEYS[3]) == 0
    and redis.call('LLEN', KEYS[2]) < tonumber(meta[1]) then
  -- Every held permit lies in a registered slot, so with no registration at
  -- all every permit must be in the pool.  Some are not: the registrations
  -- and slots expired (Redis unreachable for longer than the lease) while
  -- meta survived.  Recover as if everything had been lost.
  recover = now + tonumber(ARGV[5])
  redis.call('HSET', KEYS[1], 'recover', recover)
  status = 'restored'
end
local out = {status, {}, 0, {}, 1}
if ARGV[7] ~= '' and not listening(ARGV[7]) then
  out[5] = 0
end
local idx = 8
for i = 1, n do
  local key = KEYS[5 + i]
  local member = ARGV[idx]
  local mode = ARGV[idx + 1]
  local k = tonumber(ARGV[idx + 2])
  local handed = redis.call('HGET', KEYS[5], member)
  local head = redis.call('LINDEX', key, 0)
  if not head then
    -- A slot always starts with an empty marker element, so that it exists
    -- (and keeps its TTL) while holding no permit.
    redis.call('RPUSH', key, '')
    if recover == 0 and k > 0 and redis.call('ZSCORE', KEYS[3], member) then
      -- Still registered, yet gone with the permits in it: it expired (Redis
      -- was out of reach for longer than the lease), nobody reclaimed it.
      -- Recover: put them back, and let the window re-create any other
      -- permit lost the same way.
      recover = now + tonumber(ARGV[5])
      redis.call('HSET', KEYS[1], 'recover', recover)
      out[1] = 'restored'
    end
    if recover ~= 0 then
      -- Re-establishing after a loss: put back what this instance holds,
      -- unless the pool has it (a failover undid the move that took it).
      for j = 1, k do
        local token = ARGV[idx + 2 + j]
        if not redis.call('LPOS', KEYS[2], token) and handed ~= token then
          redis.call('RPUSH', key, token)
        end
      end
    end
  elseif head ~= '' then
    redis.call('LPUSH', key, '')
  end
  redis.call('ZADD', KEYS[3], now + ttl, member)
  redis.call('PEXPIRE', key, ttl)
  local content = redis.call('LRANGE', key, 1, -1)
  if mode == 'd' then
    redis.call('ZREM', KEYS[4], member)
  elseif string.sub(mode, 1, 1) == 'w' and not handed and #content == 0
      and not redis.call('ZSCORE', KEYS[4], member) then
    -- The ticket was dropped (its lease looked dead to a release while this
    -- process stalled) or lost with the keys: take a free permit, or queue
    -- again at the back.
    local token = redis.call('LMOVE', KEYS[2], key, 'LEFT', 'RIGHT')
    if token then
      content[1] = token
    else
      local number = string.sub(mode, 2)
      if number == '' then
        number = ticket_number(KEYS[1])
      end
      redis.call('ZADD', KEYS[4], number, member)
      local queued = out[4]
      queued[#queued + 1] = member
      queued[#queued + 1] = number
    end
  end
  if handed then
    content[#content + 1] = handed
  end
  out[5 + i] = content
  idx = idx + 3 + k
end
redis.call('PEXPIRE', KEYS[4], ttl)
redis.call('PEXPIRE', KEYS[5], ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
-- Members whose lease has run more than half out: their slots must be kept
-- alive until reclaimed (or reclaimed now, if expired).
out[2] = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now + math.floor(ttl / 2))
if recover ~= 0 and recover <= now then
  out[3] = 1
end
return out
