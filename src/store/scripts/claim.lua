-- Take entries a job must deliver again (see src/store/stream/read.rs), claiming each for this
-- consumer with XCLAIM, which counts a delivery.
--
-- KEYS[1] the source stream   KEYS[2] the job's retry sorted set
-- KEYS[3] the job's hash (counters)   KEYS[4] the job's dead-letter stream
-- KEYS[5] (when the source is a sluice queue) its delayed tasks: in 'due' mode, tasks whose
--         time has come are first appended to the queue (field `payload`) and removed
-- ARGV[1] consumer group   ARGV[2] consumer name   ARGV[3] now (ms)   ARGV[4] most entries
-- ARGV[5] mode:
--   'due'  — retries whose time has come; returns {next due time or '', entries}
--   'idle' — entries pending for longer than ARGV[6] ms, scanned from cursor ARGV[7] (an
--            XPENDING start: '-' or '(<id>'); returns {next cursor ('-' when the scan went
--            round), entries}. ARGV[8..] are the ids this process is handling right now: those
--            are skipped when this consumer holds them; anything else it holds (an earlier
--            process's, or a read whose reply was lost) is taken back. A retry scheduled for
--            later is taken over but left scheduled, without counting a delivery (JUSTID).
-- entries: {{id, deliveries, {field, value, …}}, …}. An entry deleted from the stream while
-- pending is not claimed (XCLAIM would silently drop it): it is acknowledged, counted dead and
-- written to the dead-letter stream with `sluice:fields` = deleted, so nothing vanishes.
local src, retry, job, dlq = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, now, count, mode = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local out = {}

-- True (after dead-lettering it) when entry `id` is no longer in the stream.
local function gone(id)
  if redis.call('XRANGE', src, id, id)[1] then return false end
  local p = redis.call('XPENDING', src, group, id, id, 1)[1]
  local deliveries = p and p[4] or 0
  redis.call('XADD', dlq, '*', 'sluice:source-id', id, 'sluice:source', src,
             'sluice:deliveries', deliveries,
             'sluice:error', 'deleted from the stream before it was handled',
             'sluice:plugin', '', 'sluice:dead-at', now, 'sluice:fields', 'deleted')
  redis.call('XACK', src, group, id)
  redis.call('ZREM', retry, id)
  redis.call('HINCRBY', job, 'received', 1)
  redis.call('HINCRBY', job, 'dead', 1)
  return true
end

local function deliver(id, min_idle)
  if gone(id) then return end
  local claimed = redis.call('XCLAIM', src, group, consumer, min_idle, id)
  local entry = claimed[1]
  if entry and entry[2] then
    local p = redis.call('XPENDING', src, group, id, id, 1)
    if p[1] then
      out[#out + 1] = {id, p[1][4], entry[2]}
    end
  end
end

if mode == 'due' then
  local next_delayed = nil
  if KEYS[5] then
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, count)) do
      local nl = string.find(member, '\n', 1, true)
      redis.call('XADD', src, '*', 'payload', nl and string.sub(member, nl + 1) or member)
      redis.call('ZREM', KEYS[5], member)
    end
    next_delayed = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')[2]
  end
  local due = redis.call('ZRANGEBYSCORE', retry, '-inf', now, 'LIMIT', 0, count)
  for _, id in ipairs(due) do
    redis.call('ZREM', retry, id)
    deliver(id, 0)
  end
  local nxt = redis.call('ZRANGE', retry, 0, 0, 'WITHSCORES')[2]
  if next_delayed and (not nxt or tonumber(next_delayed) < tonumber(nxt)) then nxt = next_delayed end
  return {nxt or '', out}
end

local min_idle, start = tonumber(ARGV[6]), ARGV[7]
local in_flight = {}
for i = 8, #ARGV do in_flight[ARGV[i]] = true end
local rows = redis.call('XPENDING', src, group, 'IDLE', min_idle, start, '+', count)
local cursor = '-'
if #rows == count then cursor = '(' .. rows[#rows][1] end
for _, row in ipairs(rows) do
  local id, owner = row[1], row[2]
  if not (owner == consumer and in_flight[id]) then
    local due = redis.call('ZSCORE', retry, id)
    if gone(id) then
      -- dead-lettered above
    elseif due and tonumber(due) > now then
      redis.call('XCLAIM', src, group, consumer, min_idle, id, 'JUSTID')
    else
      if due then redis.call('ZREM', retry, id) end
      deliver(id, min_idle)
    end
  end
end
return {cursor, out}
