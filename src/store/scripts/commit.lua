-- Commit one handled batch of a job in one atomic step (see src/store/stream/commit.rs).
--
-- KEYS[1]   the source stream          KEYS[2] the stream's counters (the job's hash for
--           its source, a hash of their own for its lifecycle stream)
-- KEYS[3]   the job's retry sorted set KEYS[4] the job's dead-letter stream
-- KEYS[5]   the job's hash (its `lifecycle_run`, the run fence)
-- KEYS[6]   the stream's held set: source entries a dead letter refers to (`<group>/<id>`)
-- KEYS[7..] every other key the batch writes, each once, with its expected type in ARGV[11];
--           then the key of each read check (ARGV[15])
-- ARGV[1] consumer group   ARGV[2] consumer name
-- ARGV[3] smallest entry id of the batch, ARGV[4] largest (numeric order)
-- ARGV[5] now (ms)         ARGV[6] plugin version (sha256)
-- ARGV[7] status record TTL in s of events that ever failed (0: none)
-- ARGV[8] status record key prefix   ARGV[9] pub/sub channel for finished events
-- ARGV[10] status record TTL in s of events done on their first delivery (0: none)
-- ARGV[11] one letter per key from KEYS[7]: its expected type ('s' stream, 't' string,
--          'z' sorted set, 'h' hash, 'l' list)
-- ARGV[12] '1' for a job whose plugin reads state: if any event is no longer ours, write
--          nothing (later events may have read its writes) and reply SLUICE_STALE
-- ARGV[13] the job run this runner serves ('' for none): if the job hash's `lifecycle_run`
--          differs, a newer run has begun; write nothing and reply SLUICE_SUPERSEDED
-- ARGV[14] '1' to announce finished events whether or not this server has a subscriber (a
--          cluster node counts only its own; the message reaches every node)
-- ARGV[15] R, the number of read checks (strict commits: the batch's read set), then R
--   checks of four values each: op, key index (into KEYS, after the written keys), a, b:
--     'k' present ('1'/'0'), value   GET must give that value (or nothing)
--     'c' value, ''                  GET must give that integer (nothing counts as 0)
--     'z' id, score ('': absent)     ZSCORE must give that score
--     'n' since (ms), count          ZCOUNT since +inf must give that count
--   Any that fails: another host wrote what the batch read; write nothing and reply
--   SLUICE_CONFLICT <key index>.
-- ARGV[16 + 4R..] one record per event:
--   id, decision ('a' ack with effects, 's' skip, 'r' retry, 'd' dead letter, 'D' dead letter
--   whose fields stay in the source, never copied: an entry over the job's size limit),
--   failed ('1' if this delivery failed), deliveries, retry due time (ms, for 'r'),
--   error or reason ('' if none), number of effects, then per effect an op and its args:
--     'x' key, max length ('': no trimming), n, then n name/value pairs XADD
--         (trimmed to about max length only if no consumer group reads the stream)
--     'k' key, ttl (0: none), value                                       SET
--     'K' key                                                             DEL
--     'c' key, delta, ttl (0: none)                                       INCRBY (+ EXPIRE)
--     'w' key, id, time (ms)                                              ZADD (window)
--     'q' key, payload                                                    XADD (queue task)
--     'Q' key, due (ms), member                                           ZADD (delayed task)
--     'h' key, field, value     HSET, 'H' key, field     HDEL: a fed event's settling write
--                                (a scan's change cache), made if it is acked or skipped
--     'u' key, ttl (s)          the event's idempotency key (`flow.dedupe_by`), always its
--                               first op: if the event is acked or skipped and the key is
--                               there, the event is a duplicate (skipped, no effect written,
--                               counted in `duplicates`); else it is SET (EX ttl) in this step
--     'o' key                   the list of its key's pending entries (`flow.order_by`): LREM
--                               of the id once the event is done (not for a retry)
--     'g' H, D, S, F, Z, name, part, value, count, within (ms), mode ('t' tumbling, 's'
--         sliding): one aggregate (`[[job.aggregate]]`) counting the event if it is acked
--         with its effects (see aggregate() below); H, D, S, F, Z index KEYS
--   where key is an index into KEYS.
--
-- An event is committed only if it is still pending for this consumer with the delivery
-- count we handled (and, for a retry, not yet scheduled): a commit retried after a lost reply,
-- or racing a host that took the entry over, never writes an effect or counts twice. Every
-- call's arguments stay far below Lua's unpack() bound (the host caps fields per emit; dead
-- letters copy at most 7000 values), so the script cannot fail half-way on its own input. Emit targets are type-checked before anything is written, so a target holding
-- another type aborts the whole batch rather than half of it.
-- Globals read in the loops below, as locals (a global is a table lookup each time).
local ARGV, KEYS, tonumber, unpack = ARGV, KEYS, tonumber, unpack
local src, job, retry, dlq, held = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[6]
local group, consumer, first_id, last_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, plugin, ttl = ARGV[5], ARGV[6], tonumber(ARGV[7])
local status_prefix, channel, done_ttl = ARGV[8], ARGV[9], tonumber(ARGV[10])
local key_types, strict = ARGV[11], ARGV[12] == '1'
local always_announce = ARGV[14] == '1'
local n_reads = tonumber(ARGV[15])
local FIRST = 16 + 4 * n_reads

if ARGV[13] ~= '' and redis.call('HGET', KEYS[5], 'lifecycle_run') ~= ARGV[13] then
  return redis.error_reply('SLUICE_SUPERSEDED ' .. ARGV[13])
end
local TYPE_NAMES = {s = 'stream', t = 'string', z = 'zset', h = 'hash', l = 'list'}
local MAX_ID = '18446744073709551615-18446744073709551615'
-- Entries older than this leave a window.
local WINDOW_SPAN_MS = 86400000

local key_type = {}
for i = 7, 6 + #key_types do
  local t = redis.call('TYPE', KEYS[i])['ok']
  local want = TYPE_NAMES[string.sub(key_types, i - 6, i - 6)]
  if t ~= 'none' and t ~= want then
    return redis.error_reply('SLUICE_BADTARGET ' .. i .. ' ' .. t)
  end
  -- A stream holding the largest id there is refuses every XADD: found here, before
  -- anything is written, rather than half-way. (An entry at that id since deleted is not
  -- seen: XINFO STREAM would, but copies the stream's first and last entries each time.)
  if t == 'stream' and #redis.call('XRANGE', KEYS[i], MAX_ID, '+', 'COUNT', 1) > 0 then
    return redis.error_reply('SLUICE_BADTARGET ' .. i .. ' stream-whose-ids-are-exhausted')
  end
  key_type[i] = t
end

-- A capped emit trims its stream only while no consumer group reads it: trimming would
-- delete entries a group (another job, any consumer) has not been delivered yet. A stream
-- this batch creates has no group.
local trimmable = {}
local function may_trim(index)
  if trimmable[index] == nil then
    trimmable[index] = key_type[index] ~= 'stream'
      or #redis.call('XINFO', 'GROUPS', KEYS[index]) == 0
  end
  return trimmable[index]
end

-- Arguments of one effect after its op, by op ('x' counts its pairs).
local ARITY = {k = 3, K = 1, c = 3, w = 3, q = 2, Q = 3, h = 3, H = 2, u = 2, o = 1, g = 11}
local function past_effects(pos, n)
  for _ = 1, n do
    local op = ARGV[pos]
    if op == 'x' then
      pos = pos + 4 + 2 * tonumber(ARGV[pos + 3])
    else
      pos = pos + 1 + ARITY[op]
    end
  end
  return pos
end

-- Which entries are still pending for this consumer, and with how many deliveries: one
-- XPENDING over the batch's id range (consumer-filtered) when it can answer for all of them,
-- else one per id. An event is ours to commit only if the group's delivery count is the one
-- we handled: a newer delivery (a retry taken, a takeover) makes this commit stale.
-- One pass over the records: how many events there are, and every counter's deltas.
-- Counters must not overflow, and must hold integers: INCRBY would fail half-way through the
-- writes. Every counter's value is followed through the batch's deltas in order (of every
-- event, whether written or not: a superset of what is written), and a value near the edge of
-- a signed 64-bit integer at any step refuses the batch before anything is written.
local n_events = 0
do
  local deltas, order = {}, {}
  local pos = FIRST
  while pos <= #ARGV do
    n_events = n_events + 1
    local n_effects = tonumber(ARGV[pos + 6])
    pos = pos + 7
    for _ = 1, n_effects do
      if ARGV[pos] == 'c' then
        local index = tonumber(ARGV[pos + 1])
        if not deltas[index] then
          deltas[index] = {}
          order[#order + 1] = index
        end
        local d = deltas[index]
        d[#d + 1] = tonumber(ARGV[pos + 2])
      end
      pos = past_effects(pos, 1)
    end
  end
  for _, index in ipairs(order) do
    local stored = redis.call('GET', KEYS[index]) or '0'
    if not string.match(stored, '^-?%d+$') or #stored > 20 then
      return redis.error_reply('SLUICE_BADTARGET ' .. index .. ' counter-holding-a-non-integer')
    end
    local at = tonumber(stored)
    if math.abs(at) >= 9.2e18 then
      return redis.error_reply('SLUICE_BADTARGET ' .. index .. ' counter-this-batch-would-overflow')
    end
    for _, delta in ipairs(deltas[index]) do
      at = at + delta
      if math.abs(at) >= 9.2e18 then
        return redis.error_reply('SLUICE_BADTARGET ' .. index .. ' counter-this-batch-would-overflow')
      end
    end
  end
end

local mine = {}
local limit = n_events + 1000
local ranged = {}
if n_events > 0 then
  ranged = redis.call('XPENDING', src, group, first_id, last_id, limit, consumer)
end
if #ranged < limit then
  for _, entry in ipairs(ranged) do mine[entry[1]] = entry[4] end
else
  local pos = FIRST
  while pos <= #ARGV do
    local id = ARGV[pos]
    local p = redis.call('XPENDING', src, group, id, id, 1, consumer)[1]
    mine[id] = p and p[4]
    pos = past_effects(pos + 7, tonumber(ARGV[pos + 6]))
  end
end

if strict then
  local pos = FIRST
  while pos <= #ARGV do
    if mine[ARGV[pos]] ~= tonumber(ARGV[pos + 3]) then
      return redis.error_reply('SLUICE_STALE ' .. ARGV[pos])
    end
    pos = past_effects(pos + 7, tonumber(ARGV[pos + 6]))
  end
end

-- The read set: everything the batch read must still be what it read.
for r = 0, n_reads - 1 do
  local at = 16 + 4 * r
  local op, index, a, b = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2], ARGV[at + 3]
  local key, same = KEYS[index], false
  if op == 'k' then
    local v = redis.call('GET', key)
    if a == '1' then same = v == b else same = v == false end
  elseif op == 'c' then
    -- As written by INCRBY the value reads back as it was read; a number written another
    -- way ("+7") compares by value.
    local v = redis.call('GET', key) or '0'
    same = v == a or (tonumber(v) ~= nil and tonumber(v) == tonumber(a))
  elseif op == 'z' then
    -- The host reads a score as whole milliseconds (a fraction dropped, below 0 as 0).
    local s = redis.call('ZSCORE', key, a)
    if b == '' then
      same = s == false
    else
      same = s ~= false and math.max(0, math.floor(tonumber(s))) == tonumber(b)
    end
  elseif op == 'n' then
    same = redis.call('ZCOUNT', key, a, '+inf') == tonumber(b)
  end
  if not same then return redis.error_reply('SLUICE_CONFLICT ' .. index) end
end

-- One aggregate counts an acked event (src/store/aggregate.rs has the keys). A tumbling
-- window is a field of hash H, `count first last value`, due in D (first + within) when it
-- has a time; a sliding one is sorted set Z of event ids by time, trimmed to `within`. S holds
-- every open window by its last event (for idle expiry and listings). Reaching the count
-- appends `threshold-reached` to the fired stream F and drops the window, in this step.
local function aggregate(pos, id)
  local function key(i) return KEYS[tonumber(ARGV[pos + i])] end
  local H, D, S, F, Z = key(1), key(2), key(3), key(4), key(5)
  local name, part, value = ARGV[pos + 6], ARGV[pos + 7], ARGV[pos + 8]
  local limit, within = tonumber(ARGV[pos + 9]), tonumber(ARGV[pos + 10])
  local sliding, t = ARGV[pos + 11] == 's', tonumber(now)
  local count, first
  if sliding then
    redis.call('ZADD', Z, t, id)
    redis.call('ZREMRANGEBYSCORE', Z, '-inf', t - within)
    redis.call('PEXPIRE', Z, within)
    count = redis.call('ZCARD', Z)
    first = tonumber(redis.call('ZRANGE', Z, 0, 0, 'WITHSCORES')[2])
  else
    count, first = 1, t
    local v = redis.call('HGET', H, part)
    if v then
      local c, f = string.match(v, '^(%d+) (%d+) ')
      count, first = tonumber(c) + 1, tonumber(f)
    end
  end
  if limit > 0 and count >= limit then
    redis.call('XADD', F, '*', 'sluice:kind', 'threshold-reached', 'sluice:source', name,
      'name', name, 'key', value, 'count', count, 'start', string.format('%d', first),
      'end', string.format('%d', t), 'reason', 'count')
    redis.call('HINCRBY', KEYS[5], 'agg:' .. name .. ':fired', 1)
    if sliding then
      redis.call('DEL', Z)
    else
      redis.call('HDEL', H, part)
      redis.call('ZREM', D, part)
    end
    redis.call('ZREM', S, part)
  else
    if not sliding then
      redis.call('HSET', H, part, count .. ' ' .. string.format('%d', first) .. ' ' ..
        string.format('%d', t) .. ' ' .. value)
      -- NX: a window opened before the aggregate had a time gets one too.
      if within > 0 then redis.call('ZADD', D, 'NX', first + within, part) end
    end
    redis.call('ZADD', S, t, part)
  end
end

local received, acked, skipped, retried, failed, dead, stale = 0, 0, 0, 0, 0, 0, 0
local duplicates = 0
local to_ack, done_ids, dead_ids = {}, {}, {}
-- The finished events are announced only while someone listens on this server, to the
-- channel or to a pattern (the list costs a string per event to build).
local announce = always_announce or redis.call('PUBSUB', 'NUMSUB', channel)[2] > 0
  or redis.call('PUBSUB', 'NUMPAT') > 0
local pos = FIRST
while pos <= #ARGV do
  local id, decision, failed_now = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2]
  local deliveries, due, text = ARGV[pos + 3], ARGV[pos + 4], ARGV[pos + 5]
  local n_effects = tonumber(ARGV[pos + 6])
  pos = pos + 7
  local ours = mine[id] == tonumber(deliveries)
  -- A retry already scheduled for this delivery: this commit ran before (its reply was lost).
  if ours and decision == 'r' and redis.call('ZSCORE', retry, id) then ours = false end
  local write = ours and decision == 'a'
  local settle = ours and (decision == 'a' or decision == 's')
  if n_effects > 0 and ARGV[pos] == 'u' then
    local key = KEYS[tonumber(ARGV[pos + 1])]
    if settle then
      if redis.call('EXISTS', key) == 1 then
        -- Its key was committed before: a duplicate, acknowledged without its effects.
        write, decision = false, 's'
        duplicates = duplicates + 1
      else
        redis.call('SET', key, id, 'EX', ARGV[pos + 2])
      end
    end
    pos = pos + 3
    n_effects = n_effects - 1
  end
  for _ = 1, n_effects do
    local op, key = ARGV[pos], KEYS[tonumber(ARGV[pos + 1])]
    if op == 'x' then
      local max_len, n = ARGV[pos + 2], tonumber(ARGV[pos + 3])
      if write then
        if max_len == '' or not may_trim(tonumber(ARGV[pos + 1])) then
          redis.call('XADD', key, '*', unpack(ARGV, pos + 4, pos + 3 + 2 * n))
        else
          redis.call('XADD', key, 'MAXLEN', '~', max_len, '*', unpack(ARGV, pos + 4, pos + 3 + 2 * n))
        end
      end
      pos = pos + 4 + 2 * n
    elseif op == 'o' then
      if ours and decision ~= 'r' then redis.call('LREM', key, 1, id) end
      pos = pos + 2
    elseif op == 'g' then
      if write then aggregate(pos, id) end
      pos = pos + 1 + ARITY.g
    elseif op == 'h' or op == 'H' then
      if settle then
        if op == 'h' then
          redis.call('HSET', key, ARGV[pos + 2], ARGV[pos + 3])
        else
          redis.call('HDEL', key, ARGV[pos + 2])
        end
      end
      pos = pos + 1 + ARITY[op]
    else
      if write then
        if op == 'k' then
          if ARGV[pos + 2] == '0' then
            redis.call('SET', key, ARGV[pos + 3])
          else
            redis.call('SET', key, ARGV[pos + 3], 'EX', ARGV[pos + 2])
          end
        elseif op == 'K' then
          redis.call('DEL', key)
        elseif op == 'c' then
          redis.call('INCRBY', key, ARGV[pos + 2])
          if ARGV[pos + 3] ~= '0' then redis.call('EXPIRE', key, ARGV[pos + 3]) end
        elseif op == 'w' then
          local at = tonumber(ARGV[pos + 3])
          redis.call('ZADD', key, at, ARGV[pos + 2])
          redis.call('ZREMRANGEBYSCORE', key, '-inf', at - WINDOW_SPAN_MS)
        elseif op == 'q' then
          redis.call('XADD', key, '*', 'payload', ARGV[pos + 2])
        elseif op == 'Q' then
          redis.call('ZADD', key, ARGV[pos + 2], ARGV[pos + 3])
        end
      end
      pos = pos + 1 + ARITY[op]
    end
  end
  if not ours then
    stale = stale + 1
  else
    received = received + 1
    if failed_now == '1' then failed = failed + 1 end
    local status
    if decision == 'r' then
      redis.call('ZADD', retry, due, id)
      retried = retried + 1
      status = 'retrying'
    else
      if tonumber(deliveries) > 1 then redis.call('ZREM', retry, id) end
      to_ack[#to_ack + 1] = id
      if decision == 'd' or decision == 'D' then
        -- The original fields are copied when they fit in one call (Lua's unpack() is
        -- bounded) and are not oversized; otherwise they stay readable in the source stream
        -- at source-id (an oversized entry is not even read here).
        local entry, copied, fields_at = nil, false, 'source'
        if decision == 'd' then
          entry = redis.call('XRANGE', src, id, id)[1]
          copied = entry ~= nil and #entry[2] <= 7000
          fields_at = copied and 'inline' or (entry and 'source' or 'deleted')
        end
        local meta = {'sluice:source-id', id, 'sluice:source', src, 'sluice:deliveries', deliveries,
                      'sluice:error', text, 'sluice:plugin', plugin, 'sluice:dead-at', now,
                      'sluice:fields', fields_at}
        if copied then
          for _, v in ipairs(entry[2]) do meta[#meta + 1] = v end
        end
        redis.call('XADD', dlq, '*', unpack(meta))
        if fields_at == 'source' then
          -- Retention must keep the entry while this dead letter refers to it.
          redis.call('ZADD', held, string.match(id, '^(%d+)'), ARGV[1] .. '/' .. id)
        end
        dead = dead + 1
        if announce then dead_ids[#dead_ids + 1] = '"' .. id .. '"' end
        status = 'dead'
      else
        if decision == 'a' then acked = acked + 1 else skipped = skipped + 1 end
        if announce then done_ids[#done_ids + 1] = '"' .. id .. '"' end
        status = 'done'
      end
    end
    -- The record: "status|attempts|plugin|updated_at|error", one string (one call, little
    -- memory). Events that ever failed keep theirs longer than first-time successes.
    local keep = ttl
    if status == 'done' and deliveries == '1' and failed_now == '0' then keep = done_ttl end
    if keep > 0 then
      if text == '' and deliveries ~= '1' then
        -- Done after retries: keep the last error of the record it replaces.
        local old = redis.call('GET', status_prefix .. id)
        if old then text = old:match('^[^|]*|[^|]*|[^|]*|[^|]*|(.*)$') or '' end
      end
      redis.call('SET', status_prefix .. id,
                 status .. '|' .. deliveries .. '|' .. plugin .. '|' .. now .. '|' .. text,
                 'EX', keep)
    end
  end
end

-- unpack() is bounded by Lua's C stack: acknowledge in chunks.
for i = 1, #to_ack, 1000 do
  redis.call('XACK', src, group, unpack(to_ack, i, math.min(i + 999, #to_ack)))
end

local counters = {received = received, acked = acked, skipped = skipped, retried = retried,
                  failed = failed, dead = dead, duplicates = duplicates}
for name, n in pairs(counters) do
  if n > 0 then redis.call('HINCRBY', job, name, n) end
end
if #done_ids > 0 or #dead_ids > 0 then
  redis.call('PUBLISH', channel, '{"done":[' .. table.concat(done_ids, ',') ..
             '],"dead":[' .. table.concat(dead_ids, ',') .. ']}')
end
return {acked, skipped, retried, failed, dead, stale, duplicates}
