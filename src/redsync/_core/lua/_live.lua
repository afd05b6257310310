-- The oldest queued waiter that is alive (a script includes it with the
-- lines '--@include listening' and '--@include live'), popped from
-- ``waiters`` with every dead ticket before it.  A waiter is alive while its
-- lease in ``leases`` runs, while nothing is handed to it yet, and while its
-- instance listens on its channel "<channel>:<instance>" on this node (see
-- _listening.lua): a process that is gone (its connections closed with it)
-- or whose listener is elsewhere absorbs nothing, and a live waiter so
-- skipped is queued again by its renewal.  The count is taken before the
-- caller writes or publishes anything, so a notice, wherever it is heard,
-- names a hand-off really made.  A member starting with ``mine`` (may be
-- nil: the caller's own instance "<instance>.") is not counted: the caller
-- delivers to it itself.  ``now`` (server ms) may be nil: it is read when a
-- ticket is met.
-- Returns member, ticket number (an integer string) and the member's
-- channel (nil for one of ``mine``), or nil when no waiter is alive.
local function next_live(waiters, leases, handed, channel, now, mine)
  while true do
    local head = redis.call('ZPOPMIN', waiters)
    if #head == 0 then
      return nil
    end
    local member = head[1]
    if not now then
      local t = redis.call('TIME')
      now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    local lease = redis.call('ZSCORE', leases, member)
    if lease and tonumber(lease) > now and redis.call('HEXISTS', handed, member) == 0 then
      local number = string.format('%d', tonumber(head[2]))
      if mine and string.sub(member, 1, #mine) == mine then
        return member, number, nil
      end
      local instance = string.match(member, '^(.*)%.[^.]*$') or member
      local target = channel .. ':' .. instance
      if listening(target) then
        return member, number, target
      end
    end
  end
end
