-- Commit one batch of a job in one atomic step (see src/store/stream.rs).
--
-- KEYS[1]   the source stream
-- KEYS[2]   the job's hash (counters)
-- KEYS[3..] every stream the batch emits to, each once
-- ARGV[1]   consumer group, ARGV[2] consumer name
-- ARGV[3..] one record per event of the batch:
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

local acked, skipped, failed, stale = 0, 0, 0, 0
local to_ack = {}
local pos = 3
while pos <= #ARGV do
  local id, flag, n_emits = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2])
  pos = pos + 3
  local mine = #redis.call('XPENDING', src, group, id, id, 1, consumer) > 0
  for _ = 1, n_emits do
    local key, n = KEYS[tonumber(ARGV[pos])], tonumber(ARGV[pos + 1])
    if mine and flag == 'a' then
      redis.call('XADD', key, '*', unpack(ARGV, pos + 2, pos + 1 + 2 * n))
    end
    pos = pos + 2 + 2 * n
  end
  if not mine then
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
