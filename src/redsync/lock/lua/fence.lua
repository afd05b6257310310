-- Issue a fence to the holder of a lock, if it still holds it (see
-- _fence.lua).  Issued only while the caller's permit token is in its slot
-- (or handed to its member), and holds of one lock never overlap in the
-- server's order, so fences rise in the order of holds.
-- KEYS[1] the holder's slot   KEYS[2] handed   KEYS[3] fence
-- ARGV[1] member   ARGV[2] token ('' when sent with the take, before the
-- token is known: then any token in the slot counts)
--@include fence
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
return next_fence(KEYS[3])
