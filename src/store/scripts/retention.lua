-- Trims a stream of the entries every consumer group on it has acknowledged: XTRIM MINID
-- at the oldest entry some group still needs (the first it has pending, or the first after
-- the last it was delivered), or that a dead letter refers to (the held set), or at
-- `now - keep_ms` if that is older (acknowledged entries younger than keep_ms stay).
-- Nothing is trimmed from a stream without groups (nobody said what it still needs), or
-- while a group named in ARGV[4..] (a job registered on the stream that has not run yet)
-- does not exist. One host at a time: the lock is set for `every_ms`, and while it is set
-- nobody else trims (but a stopping job's last pass). Ids are compared as strings (a sequence may exceed Lua's integers).
--
-- KEYS[1] the stream, KEYS[2] the lock, KEYS[3] the held set (member `<group>/<id>`,
--         score the id's ms)
-- ARGV[1] holder (consumer name), ARGV[2] every_ms, ARGV[3] keep_ms, ARGV[4..] groups that
--         must exist
-- Returns {trimmed, first id kept ('' when all went)} when it trimmed; {-1, holder} when
-- the lock is another's; {-2, why} when nothing may be decided.

-- every_ms 0: a stopping job's last pass, whoever holds the lock (a pass is one atomic
-- step: two at once trim no more than one would).
if ARGV[2] ~= '0' and not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {-1, redis.call('GET', KEYS[2]) or ''}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-2, 'no stream'}
end

-- Decimal strings without leading zeros, as Redis writes ids.
local function less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if am ~= bm then return less(am, bm) end
  return less(as, bs)
end

-- The oldest id that must stay; nil: none so far.
local floor = nil
local function need(id)
  if id and (floor == nil or older(id, floor)) then floor = id end
end

local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  return {-2, 'no consumer group'}
end
local present = {}
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do
    info[g[i]] = g[i + 1]
  end
  present[info['name']] = true
  if info['pending'] > 0 then
    need(redis.call('XPENDING', KEYS[1], info['name'])[2])
  end
  local after = redis.call('XRANGE', KEYS[1], '(' .. info['last-delivered-id'], '+', 'COUNT', 1)
  if #after > 0 then
    need(after[1][1])
  end
end
for i = 4, #ARGV do
  if not present[ARGV[i]] then
    return {-2, 'group ' .. ARGV[i] .. ' of a registered job does not exist yet'}
  end
end

local held = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if #held > 0 then
  -- Every entry from that millisecond on stays (the score holds only the ms).
  need(string.format('%.0f-0', tonumber(held[2])))
end
local keep = tonumber(ARGV[3])
if keep > 0 then
  local t = redis.call('TIME')
  need(string.format('%.0f-0', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - keep))
end
if floor == nil then
  -- Every group has everything acknowledged: all of it goes.
  return {redis.call('XTRIM', KEYS[1], 'MAXLEN', 0), ''}
end
return {redis.call('XTRIM', KEYS[1], 'MINID', floor), floor}
