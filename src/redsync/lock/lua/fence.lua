-- Issue a fence to the holder of a lock, if it still holds it: the server
-- time in microseconds, raised above the last fence issued (kept in the
-- fence key).  Issued only while the caller's permit token is in its slot
-- (or handed to its member), and holds of one lock never overlap in the
-- server's order, so fences rise in the order of holds.  With the fence key
-- gone (expired, flushed, a restart) the clock alone keeps them rising, as
-- long as it does not step back by more than the outage lasted.
-- KEYS[1] the holder's slot   KEYS[2] handed   KEYS[3] fence
-- ARGV[1] member   ARGV[2] token ('' when sent with the take, before the
-- token is known: then any token in the slot counts)   ARGV[3] fence key TTL ms
-- Returns the fence (a decimal string), or false if the token is not held.
local held = false
if ARGV[2] == '' then
  -- A slot is its empty marker element and at most one token.
  for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, 2)) do
    if item ~= '' then
      held = true
    end
  end
else
  held = redis.call('LPOS', KEYS[1], ARGV[2]) ~= false
    or redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2]
end
if not held then
  return false
end
local t = redis.call('TIME')
local n = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
if n <= last then
  n = last + 1
end
local fence = string.format('%d', n)
redis.call('SET', KEYS[3], fence, 'PX', ARGV[3])
return fence
