-- Finish outbox entries in one step (see src/store/forward.rs): the forwarded ones are
-- acknowledged and deleted; the ones that can never be forwarded are copied to the outbox's
-- dead letters with the reason, then acknowledged and deleted. Done twice, it does nothing
-- the second time (an entry no longer in the outbox is not copied again).
-- KEYS[1] the outbox   KEYS[2] its dead letters
-- ARGV[1] the consumer group   ARGV[2] n, then n ids forwarded
-- then m, then m pairs: id, reason
local outbox, dead, group = KEYS[1], KEYS[2], ARGV[1]
local n = tonumber(ARGV[2])
local ids = {}
for i = 3, 2 + n do ids[#ids + 1] = ARGV[i] end
local pos = 3 + n
local m = tonumber(ARGV[pos])
pos = pos + 1
for _ = 1, m do
  local id, reason = ARGV[pos], ARGV[pos + 1]
  local entry = redis.call('XRANGE', outbox, id, id)[1]
  if entry then
    local fields = {'sluice:outbox-id', id, 'sluice:error', reason}
    for _, v in ipairs(entry[2]) do fields[#fields + 1] = v end
    redis.call('XADD', dead, '*', unpack(fields))
  end
  ids[#ids + 1] = id
  pos = pos + 2
end
for i = 1, #ids, 1000 do
  local chunk = {unpack(ids, i, math.min(i + 999, #ids))}
  redis.call('XACK', outbox, group, unpack(chunk))
  redis.call('XDEL', outbox, unpack(chunk))
end
return #ids
