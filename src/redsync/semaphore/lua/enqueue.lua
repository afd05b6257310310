-- A waiting acquisition: take a permit from the pool into the slot, or
-- queue the slot's member as a ticket (numbered in arrival order, see
-- _ticket.lua).  The pool
-- holds tokens only while no live ticket waits (every path that frees a
-- token hands it to the oldest live ticket first), so taking from it never
-- overtakes a waiter.  Idempotent for one slot: a retry after a lost reply
-- reports the token the first attempt took or was handed, or the ticket.
-- KEYS[1] meta   KEYS[2] pool   KEYS[3] slot   KEYS[4] waiters   KEYS[5] handed
-- ARGV[1] member   ARGV[2] generation   ARGV[3] ttl ms
-- ARGV[4] the instance's channel "<channel>:<instance>"
-- Returns {1, token} (this slot holds token), {0, number, listening} (queued
-- as ticket number; listening is 0 when no connection of this node is
-- subscribed to the instance's channel: its listener is elsewhere, see
-- _give.lua, and must move before any release hands this ticket a permit),
-- {-1} (the
-- semaphore is gone), {-2} (another generation), {-3} (the slot does not
-- exist: register it first).
--@include ticket
--@include listening
local gen = redis.call('HGET', KEYS[1], 'gen')
if not gen then
  return {-1}
end
if gen ~= ARGV[2] then
  return {-2}
end
local handed = redis.call('HGET', KEYS[5], ARGV[1])
if handed then
  return {1, handed}
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  return {-3}
end
local held = redis.call('LINDEX', KEYS[3], 1)
if held then
  return {1, held}
end
local queued = redis.call('ZSCORE', KEYS[4], ARGV[1])
if queued then
  return {0, string.format('%d', tonumber(queued)), listening(ARGV[4]) and 1 or 0}
end
local token = redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT')
if token then
  return {1, token}
end
local number = ticket_number(KEYS[1])
redis.call('ZADD', KEYS[4], number, ARGV[1])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
return {0, number, listening(ARGV[4]) and 1 or 0}
