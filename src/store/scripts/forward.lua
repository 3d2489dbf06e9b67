-- Forward one job's outbox entries bound for one key of another cluster slot (see
-- src/store/forward.rs), in outbox order, each exactly once: the last entry forwarded to
-- this target is kept beside it (KEYS[2]), and an entry at or before it was forwarded
-- already (by a forwarder that stopped before acknowledging it in the outbox).
--
-- KEYS[1] the target (a stream, or a sluice queue's delayed-tasks sorted set)
-- KEYS[2] the id of the last outbox entry of this job forwarded to it (a string)
-- ARGV[1] how long KEYS[2] is kept after its last write (ms)
-- ARGV[2..] per entry: its outbox id, its op, n, then n arguments:
--   'x' max length ('': no trimming), then the entry's name/value pairs   XADD (emit)
--   'q' payload                                                         XADD (queue task)
--   'Q' due (ms), member                                                ZADD (delayed task)
-- Returns how many entries were written; SLUICE_BADTARGET <type> (nothing written) when the
-- target holds another type, a stream whose ids are exhausted, or the entries disagree on
-- its type. The mark is written (its TTL renewed) whenever entries are given, even if all
-- were written before: a `WAIT` after this script then always has a write to wait for.
local ARGV, KEYS, tonumber, unpack = ARGV, KEYS, tonumber, unpack
local target, mark = KEYS[1], KEYS[2]

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms or '0'), tonumber(seq or '0')
end
-- Whether outbox id a comes after b.
local function after(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  if am ~= bm then return am > bm end
  return as > bs
end

local want = 'stream'
if ARGV[3] == 'Q' then want = 'zset' end
-- Every entry must agree on the target's type (a zset for delayed tasks, else a stream):
-- checked before anything is written.
do
  local pos = 2
  while pos <= #ARGV do
    local kind = 'stream'
    if ARGV[pos + 1] == 'Q' then kind = 'zset' end
    if kind ~= want then return redis.error_reply('SLUICE_BADTARGET entries-of-two-types') end
    pos = pos + 3 + tonumber(ARGV[pos + 2])
  end
end
local t = redis.call('TYPE', target)['ok']
if t ~= 'none' and t ~= want then
  return redis.error_reply('SLUICE_BADTARGET ' .. t)
end
if t == 'stream' and
    #redis.call('XRANGE', target, '18446744073709551615-18446744073709551615', '+', 'COUNT', 1) > 0 then
  return redis.error_reply('SLUICE_BADTARGET stream-whose-ids-are-exhausted')
end
-- A capped emit trims only a stream no consumer group reads (as commit.lua does).
local trimmable = nil
local function may_trim()
  if trimmable == nil then
    trimmable = t ~= 'stream' or #redis.call('XINFO', 'GROUPS', target) == 0
  end
  return trimmable
end

local last = redis.call('GET', mark) or '0-0'
local top, written = last, 0
local pos = 2
while pos <= #ARGV do
  local id, op, n = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2])
  local a = pos + 3
  if after(id, top) then
    if op == 'x' then
      if ARGV[a] == '' or not may_trim() then
        redis.call('XADD', target, '*', unpack(ARGV, a + 1, a + n - 1))
      else
        redis.call('XADD', target, 'MAXLEN', '~', ARGV[a], '*', unpack(ARGV, a + 1, a + n - 1))
      end
      -- A stream this script creates has no group: trimming it stays allowed.
      if t == 'none' then t = 'stream' end
    elseif op == 'q' then
      redis.call('XADD', target, '*', 'payload', ARGV[a])
    elseif op == 'Q' then
      redis.call('ZADD', target, ARGV[a], ARGV[a + 1])
    end
    top = id
    written = written + 1
  end
  pos = a + n
end
if #ARGV > 1 then
  redis.call('SET', mark, top, 'PX', ARGV[1])
end
return written
