-- For a finite job: when its source is drained (nothing undelivered, pending, scheduled,
-- delayed or still in its list) and `job-started` is handled, append `job-finished`, once
-- per run (see src/store/lifecycle.rs `check_finished`).
-- KEYS[1] the job hash   KEYS[2] the lifecycle stream   KEYS[3] the source stream
-- KEYS[4] the job's retry set
-- KEYS[5] what feeds the source: a queue's delayed tasks (a sorted set), a list source's
--         list, a scan's walk tasks (a stream) (else the retry set again)
-- KEYS[6] the job's outbox (on a Redis Cluster: effects not yet forwarded)
-- ARGV[1] the run   ARGV[2] the job's consumer group
-- Returns 1 (appended now), 2 (appended before), 0 (still working).
if redis.call('HGET', KEYS[1], 'finished_run') == ARGV[1] then return 2 end
-- Only for the run now under way (a host may still act on an older one).
if redis.call('HGET', KEYS[1], 'lifecycle_run') ~= ARGV[1] then return 0 end
local function id_at_least(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as >= bs)
end
local function drained(stream)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if not ok then return false end
  for _, g in ipairs(groups) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == ARGV[2] then
      if f['pending'] ~= 0 then return false end
      if f['lag'] then return f['lag'] == 0 end
      -- No lag when entries were deleted: compare with the newest entry.
      local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
      return #newest == 0 or id_at_least(f['last-delivered-id'], newest[1][1])
    end
  end
  return false
end
if not drained(KEYS[2]) or not drained(KEYS[3]) then return 0 end
local function waiting(key)
  local kind = redis.call('TYPE', key).ok
  if kind == 'zset' then return redis.call('ZCARD', key) end
  if kind == 'list' then return redis.call('LLEN', key) end
  if kind == 'stream' then return redis.call('XLEN', key) end
  return 0
end
if redis.call('ZCARD', KEYS[4]) > 0 or waiting(KEYS[5]) > 0 then return 0 end
if redis.call('XLEN', KEYS[6]) > 0 then return 0 end
-- A scan job is done once this run's pass has ended (src/store/scripts/scan_pass.lua), not
-- merely when an older run's walk ran dry.
local scan_run = redis.call('HGET', KEYS[1], 'scan_run')
if scan_run and (scan_run ~= ARGV[1] or redis.call('HGET', KEYS[1], 'scan_running') == '1') then
  return 0
end
redis.call('HSET', KEYS[1], 'finished_run', ARGV[1])
redis.call('XADD', KEYS[2], '*', 'kind', 'job-finished', 'run', ARGV[1])
return 1
