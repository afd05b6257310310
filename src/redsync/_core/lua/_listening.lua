-- Whether a waiter's instance listens on this node (a script includes it
-- with '--@include listening'): the connections subscribed to ``target``
-- here, as PUBSUB SHARDNUMSUB counts them (true when they cannot be counted:
-- a hand-off is then made all the same, and found by the owner's renewal).
local function listening(target)
  local count = redis.pcall('PUBSUB', 'SHARDNUMSUB', target)
  if type(count) ~= 'table' or type(count[2]) ~= 'number' then
    return true  -- an error reply (a table with 'err'): not allowed to count
  end
  return count[2] > 0
end
