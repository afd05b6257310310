-- End read holds; when the last live read is gone and a writer drains the
-- lock, tell it (a notice on its channel, named in the drain key).
-- KEYS[1] readers   KEYS[2] drain
-- ARGV[1..n] read members
-- Returns how many of them were still held.
--@include readers
local gone = redis.call('ZREM', KEYS[1], unpack(ARGV))
if live_readers(KEYS[1], server_ms()) == 0 then
  local drain = redis.call('GET', KEYS[2])
  if drain then
    local channel, id = string.match(drain, '^(%S+) (%S+)$')
    if channel and channel ~= '-' then
      redis.pcall('SPUBLISH', channel, id)
    end
  end
end
return gone
