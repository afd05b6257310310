-- One renewal of an instance's queued waits: extend their leases, queue
-- again a ticket that was dropped (its instance was not heard when a signal
-- came: the signal went on), or take a pending signal for it, and hand on
-- the signals of waiters whose lease ran out.
-- KEYS[1] signals   KEYS[2] waiters   KEYS[3] leases   KEYS[4] handed
-- KEYS[5] tickets
-- ARGV[1] lease ms   ARGV[2] the event's channel   ARGV[3] the instance's
-- channel ('' when not subscribed)   ARGV[4] n   then n pairs: member,
-- ticket number ('' when not known yet: a new one is given)
-- Returns {listening (0/1, see _listening.lua), {member, number, ...} of
-- the tickets queued again, then per member the signal handed to it or ''}.
--@include ticket
--@include listening
--@include live
--@include give
local ttl = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
reap(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], now, 16)
local out = {1, {}}
if ARGV[3] ~= '' and not listening(ARGV[3]) then
  out[1] = 0
end
local n = tonumber(ARGV[4])
for i = 1, n do
  local member = ARGV[3 + 2 * i]
  local number = ARGV[4 + 2 * i]
  redis.call('ZADD', KEYS[3], now + ttl, member)
  local handed = redis.call('HGET', KEYS[4], member)
  local queued = redis.call('ZSCORE', KEYS[2], member)
  if not handed then
    -- A signal pending while this member waits (set where nobody was heard,
    -- or by a client that does not run scripts): take it.
    local signal = redis.call('LPOP', KEYS[1])
    if signal then
      redis.call('HSET', KEYS[4], member, signal)
      redis.call('ZREM', KEYS[2], member)
      handed = signal
    elseif not queued then
      if number == '' then
        number = ticket_number(KEYS[5])
      end
      redis.call('ZADD', KEYS[2], number, member)
      local again = out[2]
      again[#again + 1] = member
      again[#again + 1] = number
    end
  end
  out[2 + i] = handed or ''
end
redis.call('PEXPIRE', KEYS[5], ttl)
return out
