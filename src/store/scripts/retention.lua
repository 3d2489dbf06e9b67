-- Trims a stream of the entries every consumer group on it has acknowledged: XTRIM MINID
-- at the oldest entry some group still needs (the first it has pending, or the first it
-- has not been delivered), or at `now - keep_ms` if that is older (acknowledged entries
-- younger than keep_ms stay). A stream without groups is left alone: nobody said what it
-- still needs. One host at a time: the lock is set for `every_ms`, and while it is set
-- nobody else trims.
--
-- KEYS[1] the stream, KEYS[2] the lock
-- ARGV[1] holder (consumer name), ARGV[2] every_ms, ARGV[3] keep_ms
-- Returns {trimmed, first id kept} when it trimmed; {-1, holder} when the lock is another's;
-- {-2, why} when there was nothing to decide on.

if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {-1, redis.call('GET', KEYS[2]) or ''}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {-2, 'no stream'}
end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return {tonumber(ms), tonumber(seq)}
end
local function older(a, b)
  return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2])
end

local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  return {-2, 'no consumer group'}
end
local floor = nil
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do
    info[g[i]] = g[i + 1]
  end
  local last = parse(info['last-delivered-id'])
  local need = {last[1], last[2] + 1}
  if info['pending'] > 0 then
    local summary = redis.call('XPENDING', KEYS[1], info['name'])
    local first = parse(summary[2])
    if older(first, need) then
      need = first
    end
  end
  if floor == nil or older(need, floor) then
    floor = need
  end
end

local keep = tonumber(ARGV[3])
if keep > 0 then
  local t = redis.call('TIME')
  local young = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - keep, 0}
  if older(young, floor) then
    floor = young
  end
end
local id = string.format('%.0f-%.0f', floor[1], floor[2])
return {redis.call('XTRIM', KEYS[1], 'MINID', id), id}
