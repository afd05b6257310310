-- A lock's next fence (a script includes it with '--@include fence'): the
-- server time in microseconds, raised above the last fence issued (kept in
-- the fence key, for an hour), so fences rise in the order they are issued,
-- also after that key is gone (the clock has moved on), unless the clock
-- steps back by more than the outage lasted.  Formatted as a plain integer.
local function next_fence(fence_key)
  local t = redis.call('TIME')
  local n = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', fence_key) or '0')
  if n <= last then
    n = last + 1
  end
  local fence = string.format('%d', n)
  redis.call('SET', fence_key, fence, 'PX', 3600000)
  return fence
end
