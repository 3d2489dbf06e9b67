-- Take entries a job must deliver again (see src/store/stream.rs), claiming each for this
-- consumer with XCLAIM, which counts a delivery.
--
-- KEYS[1] the source stream   KEYS[2] the job's retry sorted set
-- ARGV[1] consumer group   ARGV[2] consumer name   ARGV[3] now (ms)   ARGV[4] most entries
-- ARGV[5] mode:
--   'due'  — retries whose time has come; returns {next due time or '', entries}
--   'idle' — entries pending on any consumer for longer than ARGV[6] ms, scanned from
--            cursor ARGV[7] (XAUTOCLAIM); returns {next cursor, entries}. An entry that is a
--            retry scheduled for later is taken over but left scheduled, and not counted as
--            a delivery (XAUTOCLAIM … JUSTID).
-- entries: {{id, deliveries, {field, value, …}}, …}; entries deleted from the stream are
-- dropped from the pending list by Redis and not returned.
local src, retry = KEYS[1], KEYS[2]
local group, consumer, now, count, mode = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local out = {}

local function deliver(id)
  local claimed = redis.call('XCLAIM', src, group, consumer, 0, id)
  local entry = claimed[1]
  if entry and entry[2] then
    local p = redis.call('XPENDING', src, group, id, id, 1)
    if p[1] then
      out[#out + 1] = {id, p[1][4], entry[2]}
    end
  end
end

if mode == 'due' then
  local due = redis.call('ZRANGEBYSCORE', retry, '-inf', now, 'LIMIT', 0, count)
  for _, id in ipairs(due) do
    redis.call('ZREM', retry, id)
    deliver(id)
  end
  local nxt = redis.call('ZRANGE', retry, 0, 0, 'WITHSCORES')
  return {nxt[2] or '', out}
end

local r = redis.call('XAUTOCLAIM', src, group, consumer, ARGV[6], ARGV[7], 'COUNT', count, 'JUSTID')
for _, id in ipairs(r[2]) do
  local due = redis.call('ZSCORE', retry, id)
  if not (due and tonumber(due) > now) then
    if due then redis.call('ZREM', retry, id) end
    deliver(id)
  end
end
return {r[1], out}
