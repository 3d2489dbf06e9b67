-- A scan job's passes (src/store/scan.rs `tick`): start one when due, see one end, report one
-- overdue — each once across the fleet, whichever host's tick comes first. The pass's state is
-- in the job hash: scan_pass (the number of the newest pass), scan_running ('1' while one
-- runs), scan_started_at / scan_ended_at (ms), scan_run (the job run that started it),
-- scan_first (the first pass of that run), scan_overdue (passes that ran past their
-- interval), and the newest pass's counters (scan_dirs, scan_files, scan_changed,
-- scan_unchanged, scan_deleted, scan_excluded, scan_unreadable).
--
-- KEYS[1] the job hash   KEYS[2] the walk tasks stream   KEYS[3] the job's stream (events)
-- KEYS[4] the job's lifecycle stream
-- ARGV[1] now (ms)   ARGV[2] interval (ms; 0: one pass per run, a finite job)   ARGV[3] run
-- ARGV[4] the job's consumer group
-- Returns {what, pass}: 'started', 'running', 'ended', 'overdue', 'waiting' (pass: ms until
-- the next is due), 'done' (a finite job's pass of this run is over).
local KEYS, ARGV, tonumber = KEYS, ARGV, tonumber
local job, tasks, events, life = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, interval, run, group = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]

local function drained(stream)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if not ok then return true end
  for _, g in ipairs(groups) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == group then
      if f['pending'] ~= 0 then return false end
      if f['lag'] then return f['lag'] == 0 end
      local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
      return newest == nil or newest[1] == f['last-delivered-id']
    end
  end
  -- No group yet: nothing of it was read; the pass is not over while it holds entries.
  return redis.call('XLEN', stream) == 0
end

local state = redis.call('HMGET', job, 'scan_pass', 'scan_running', 'scan_started_at', 'scan_run',
  'scan_first', 'scan_overdue_pass')
local pass = tonumber(state[1] or '0')
local running = state[2] == '1'
local started_at = tonumber(state[3] or '0')
local same_run = state[4] == run

if running then
  if redis.call('XLEN', tasks) == 0 and drained(events) then
    redis.call('HSET', job, 'scan_running', '0', 'scan_ended_at', now)
    -- A periodic job's pass ends with `job-finished` (a finite job's is issued as for any
    -- finite job, once its source is drained: src/store/lifecycle.rs).
    if interval > 0 then
      redis.call('XADD', life, '*', 'kind', 'job-finished', 'run', run, 'pass', pass)
    end
    return {'ended', pass}
  end
  if interval > 0 and now >= started_at + interval and state[6] ~= tostring(pass) then
    redis.call('HSET', job, 'scan_overdue_pass', pass)
    redis.call('HINCRBY', job, 'scan_overdue', 1)
    return {'overdue', pass}
  end
  return {'running', pass}
end

if interval == 0 then
  if same_run and pass > 0 then return {'done', pass} end
elseif same_run and pass > 0 and now < started_at + interval then
  return {'waiting', started_at + interval - now}
end

pass = pass + 1
redis.call('HSET', job, 'scan_pass', pass, 'scan_running', '1', 'scan_started_at', now,
  'scan_run', run, 'scan_dirs', 0, 'scan_files', 0, 'scan_changed', 0, 'scan_unchanged', 0,
  'scan_deleted', 0, 'scan_excluded', 0, 'scan_unreadable', 0)
redis.call('HDEL', job, 'scan_ended_at')
-- The run's first pass follows the run's own `job-started`; each later pass has its own.
if same_run then
  redis.call('XADD', life, '*', 'kind', 'job-started', 'run', run, 'pass', pass)
else
  redis.call('HSET', job, 'scan_first', pass)
end
pcall(redis.call, 'XGROUP', 'CREATE', tasks, group, '0', 'MKSTREAM')
redis.call('XADD', tasks, '*', 'dir', '', 'pass', pass, 'depth', 0)
return {'started', pass}
