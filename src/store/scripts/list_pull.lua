-- Move items of a `list:KEY` job's list into its list stream (src/store/list.rs): popped
-- and appended in one call, so an item is in the list or in the stream, never in neither
-- or both. Each entry is `sluice:kind list-item`, `sluice:source <list>`, `payload <item>`
-- (src/store/stream/mod.rs, `Entries::Fed`). Nothing moves while the job's group has `max_lag` entries or more not yet
-- delivered: the rest waits in the list, where producers and their tools see the backlog.
--
-- KEYS[1] the list   KEYS[2] the job's list stream
-- ARGV[1] how many items at most   ARGV[2] the end to pop: 'left' or 'right'
-- ARGV[3] the job's consumer group   ARGV[4] max_lag
-- Returns how many items moved, -1 when the group's lag is at max_lag;
-- SLUICE_BADTARGET <type> when the list key holds another type.
local KEYS, ARGV, tonumber = KEYS, ARGV, tonumber
local list, stream = KEYS[1], KEYS[2]

local kind = redis.call('TYPE', list).ok
if kind == 'none' then return 0 end
if kind ~= 'list' then return redis.error_reply('SLUICE_BADTARGET ' .. kind) end

-- Whether stream id `a` is before `b`.
local function before(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  if #ams ~= #bms then return #ams < #bms end
  if ams ~= bms then return ams < bms end
  return tonumber(aseq) < tonumber(bseq)
end

local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
if ok then
  for _, g in ipairs(groups) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == ARGV[3] then
      if f['lag'] then
        if f['lag'] >= tonumber(ARGV[4]) then return -1 end
      else
        -- Redis cannot tell the lag (entries deleted past the group's position): move only
        -- once the group has read up to the stream's last entry.
        local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
        if last and before(f['last-delivered-id'], last[1]) then return -1 end
      end
    end
  end
end

local pop = ARGV[2] == 'left' and 'LPOP' or 'RPOP'
local items = redis.call(pop, list, tonumber(ARGV[1]))
if not items then return 0 end
for _, item in ipairs(items) do
  redis.call('XADD', stream, '*', 'sluice:kind', 'list-item', 'sluice:source', list, 'payload', item)
end
return #items
