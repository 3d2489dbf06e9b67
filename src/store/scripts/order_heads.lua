-- Which of these entries of a job with `flow.order_by` may be handled now: those first in
-- their key's list of pending entries (order_read.lua), or whose key has none. A first entry
-- no longer pending in the group (done another way: dead-lettered by a takeover, acked by
-- hand) is dropped from its list on the way.
-- KEYS[1] the stream   KEYS[2..] the list of each entry's key
-- ARGV[1] group   ARGV[2..] the entries' ids (ARGV[i] for KEYS[i])
-- Returns 1 (free) or 0 (behind another entry) per entry.
local out = {}
for i = 2, #KEYS do
  local free = 0
  for _ = 1, 1000 do
    local head = redis.call('LINDEX', KEYS[i], 0)
    if not head or head == ARGV[i] then
      free = 1
      break
    end
    if #redis.call('XPENDING', KEYS[1], ARGV[1], head, head, 1) > 0 then break end
    redis.call('LPOP', KEYS[i])
  end
  out[#out + 1] = free
end
return out
