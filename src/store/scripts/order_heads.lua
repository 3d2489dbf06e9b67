-- Which of these entries of a job with `flow.order_by` may be handled now: those first in
-- their key's list of pending entries (order_read.lua), or whose key has none. A first entry
-- no longer pending in the group (done another way: dead-lettered by a takeover, acked by
-- hand) is dropped from its list on the way.
-- KEYS[1] the stream   KEYS[2] the job's retry sorted set   KEYS[3..] the list of each
-- entry's key
-- ARGV[1] group   ARGV[2..] the entries' ids (ARGV[i] for KEYS[i + 1])
-- Returns per entry: 0 free; -1 behind an entry being handled; else the time (ms) the entry
-- it is behind is scheduled to be retried (nothing of its key moves before).
local out = {}
for i = 3, #KEYS do
  local id = ARGV[i - 1]
  local answer = -1
  for _ = 1, 1000 do
    local head = redis.call('LINDEX', KEYS[i], 0)
    if not head or head == id then
      answer = 0
      break
    end
    if #redis.call('XPENDING', KEYS[1], ARGV[1], head, head, 1) > 0 then
      local due = redis.call('ZSCORE', KEYS[2], head)
      if due then answer = math.max(1, math.floor(tonumber(due))) end
      break
    end
    redis.call('LPOP', KEYS[i])
  end
  out[#out + 1] = answer
end
return out
