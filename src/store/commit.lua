-- Commit one batch of a job in one atomic step (see src/store/stream.rs).
--
-- KEYS[1]   the source stream
-- KEYS[2]   the job's hash (counters)
-- KEYS[3..] every stream the batch emits to, each once
-- ARGV[1]   consumer group, ARGV[2] consumer name
-- ARGV[3]   the smallest entry id of the batch, ARGV[4] the largest (numeric order)
-- ARGV[5..] one record per event of the batch:
--             id, flag ('a' ack with effects, 's' skip: ack without effects,
--                       'f' failed: count it, leave it pending),
--             number of emits, then per emit: index into KEYS, number of fields,
--             then that many name/value pairs.
--
-- An event is committed only if it is still pending for this consumer: a batch whose
-- commit is retried after a lost reply, or whose entries another host reclaimed, never
-- writes an effect twice. Emit targets are type-checked before anything is written, so a
-- target holding another type aborts the whole batch rather than half of it.
local src, job = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]

for i = 3, #KEYS do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'none' and t ~= 'stream' then
    return redis.error_reply('SLUICE_BADTARGET ' .. KEYS[i] .. ' ' .. t)
  end
end

-- Which of the batch's entries are still pending for this consumer: one XPENDING over the
-- batch's id range (consumer-filtered) when it can answer for all of them, else one per id.
local first_id, last_id = ARGV[3], ARGV[4]
local n_events = 0
do
  local pos = 5
  while pos <= #ARGV do
    n_events = n_events + 1
    local n_emits = tonumber(ARGV[pos + 2])
    pos = pos + 3
    for _ = 1, n_emits do pos = pos + 2 + 2 * tonumber(ARGV[pos + 1]) end
  end
end
local mine = {}
local limit = n_events + 1000
local ranged = n_events > 0 and redis.call('XPENDING', src, group, first_id, last_id, limit, consumer) or {}
if #ranged < limit then
  for _, entry in ipairs(ranged) do mine[entry[1]] = true end
else
  local pos = 5
  while pos <= #ARGV do
    local id = ARGV[pos]
    mine[id] = #redis.call('XPENDING', src, group, id, id, 1, consumer) > 0
    local n_emits = tonumber(ARGV[pos + 2])
    pos = pos + 3
    for _ = 1, n_emits do pos = pos + 2 + 2 * tonumber(ARGV[pos + 1]) end
  end
end

local acked, skipped, failed, stale = 0, 0, 0, 0
local to_ack = {}
local pos = 5
while pos <= #ARGV do
  local id, flag, n_emits = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2])
  pos = pos + 3
  local ours = mine[id]
  for _ = 1, n_emits do
    local key, n = KEYS[tonumber(ARGV[pos])], tonumber(ARGV[pos + 1])
    if ours and flag == 'a' then
      redis.call('XADD', key, '*', unpack(ARGV, pos + 2, pos + 1 + 2 * n))
    end
    pos = pos + 2 + 2 * n
  end
  if not ours then
    stale = stale + 1
  elseif flag == 'f' then
    failed = failed + 1
  else
    to_ack[#to_ack + 1] = id
    if flag == 'a' then acked = acked + 1 else skipped = skipped + 1 end
  end
end

-- unpack() is bounded by Lua's C stack: acknowledge in chunks.
for i = 1, #to_ack, 1000 do
  redis.call('XACK', src, group, unpack(to_ack, i, math.min(i + 999, #to_ack)))
end

local received = acked + skipped + failed
if received > 0 then redis.call('HINCRBY', job, 'received', received) end
if acked > 0 then redis.call('HINCRBY', job, 'acked', acked) end
if skipped > 0 then redis.call('HINCRBY', job, 'skipped', skipped) end
if failed > 0 then redis.call('HINCRBY', job, 'failed', failed) end
return {acked, skipped, failed, stale}
