-- A waiting wait(): take a pending signal, or queue the wait's member as a
-- ticket (numbered in arrival order, see _ticket.lua).  A signal taken is
-- delivered at once: recorded in acked under the member, with the wait's
-- id, so a retry after a lost reply returns it again instead of taking
-- another.  Idempotent for one wait.
-- KEYS[1] signals   KEYS[2] waiters   KEYS[3] leases   KEYS[4] handed
-- KEYS[5] acked   KEYS[6] tickets (the ticket counter)
-- ARGV[1] member   ARGV[2] wait id   ARGV[3] lease ms   ARGV[4] the event's
-- channel   ARGV[5] the ack record ttl ms   ARGV[6] '1': only take a pending
-- signal, queue nothing (a first try, before the instance subscribes)
-- Returns {1, signal} (delivered to this wait), {0, number, listening}
-- (queued as ticket number; listening is 0 when this node has no connection
-- subscribed to the instance's channel, see _listening.lua), or {-1} (only
-- a take was asked, and nothing was pending).
--@include ticket
--@include listening
--@include live
--@include give
local member, id = ARGV[1], ARGV[2]
local ttl = tonumber(ARGV[3])
local done = redis.call('HGET', KEYS[5], member)
if done and string.sub(done, 1, #id + 1) == id .. ' ' then
  return {1, string.sub(done, #id + 2)}
end
local function deliver(signal)
  redis.call('HDEL', KEYS[4], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZREM', KEYS[3], member)
  redis.call('HSET', KEYS[5], member, id .. ' ' .. signal)
  redis.call('PEXPIRE', KEYS[5], ARGV[5])
  return {1, signal}
end
local handed = redis.call('HGET', KEYS[4], member)
if handed then
  return deliver(handed)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local instance = string.match(member, '^(.*)%.[^.]*$') or member
local heard = listening(ARGV[4] .. ':' .. instance) and 1 or 0
local queued = redis.call('ZSCORE', KEYS[2], member)
if queued then
  redis.call('ZADD', KEYS[3], now + ttl, member)
  return {0, string.format('%d', tonumber(queued)), heard}
end
-- Signals held by waiters that are gone go on first (to the queue's head).
reap(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[4], now, 4)
local signal = redis.call('LPOP', KEYS[1])
if signal then
  return deliver(signal)
end
if ARGV[6] == '1' then
  return {-1}
end
local number = ticket_number(KEYS[6])
redis.call('PEXPIRE', KEYS[6], ttl)
redis.call('ZADD', KEYS[2], number, member)
redis.call('ZADD', KEYS[3], now + ttl, member)
return {0, number, heard}
