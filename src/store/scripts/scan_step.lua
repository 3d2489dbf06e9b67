-- One walk task of a scan job done (src/store/scan.rs `finish`): what a walker found in a
-- directory (or a batch of its files) compared with the job's change cache, in one step —
-- changed files become events of the job's stream, subdirectories and file batches become
-- tasks, gone entries become `file-deleted` events (or tasks for gone subdirectories), the
-- pass's counters move, and the task is acknowledged and deleted. Only while the task is
-- still this walker's: a task taken over by another walker is theirs to finish.
--
-- A file's cache entry is not written here: its event carries it (`sluice:settle-*`), and
-- the commit that acknowledges the event writes it, so a file is never marked seen before
-- its plugin handled it. Subdirectories are marked (`d`) here.
--
-- KEYS[1] the tasks stream   KEYS[2] the job's stream   KEYS[3] the job hash
-- KEYS[4] the directory's cache hash
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] task id   ARGV[4] pass   ARGV[5] flags: 'c'
-- compare with the cache, 'd' look for deletions (a gone directory's task always does),
-- 'e' directory events   ARGV[6] root (the events' source)   ARGV[7] the directory (relative; '' root)
-- ARGV[8] its depth   ARGV[9] whether this is a whole directory ('1') or a batch ('0')
-- ARGV[10] excluded count   ARGV[11] unreadable count
-- ARGV[12] P, then P names present but not looked at here (excluded, unreadable, batched)
-- then S, then S subdirectory names; then B, then B batches (names joined by NUL)
-- then per file: name, signature, then the event's fields count F, then F name/value pairs
-- Returns {files, changed, unchanged, deleted}, or -1 when the task is not this walker's.
local KEYS, ARGV, tonumber = KEYS, ARGV, tonumber
local tasks, events, job, seen = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, task, pass, flags = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local root, dir, depth = ARGV[6], ARGV[7], tonumber(ARGV[8])
local compare = string.find(flags, 'c', 1, true) ~= nil
local deletions = string.find(flags, 'd', 1, true) ~= nil and ARGV[9] == '1'
local dir_events = string.find(flags, 'e', 1, true) ~= nil

if #redis.call('XPENDING', tasks, group, task, task, 1, consumer) == 0 then
  return -1
end

local function path(name)
  if dir == '' then return name end
  return dir .. '/' .. name
end

-- What the cache holds for this directory: all of it when deletions are looked for, else
-- just the entries of the files looked at.
local cached = {}
if deletions then
  local flat = redis.call('HGETALL', seen)
  for i = 1, #flat, 2 do cached[flat[i]] = flat[i + 1] end
end

local present = {}
local pos = 12
local n = tonumber(ARGV[pos])
for i = pos + 1, pos + n do present[ARGV[i]] = true end
pos = pos + n + 1

local files, changed, unchanged, deleted = 0, 0, 0, 0
local TYPES = {f = 'file', l = 'link', s = 'socket', p = 'fifo', b = 'block', c = 'char'}
local function type_of(signature)
  return TYPES[string.sub(signature, 1, 1)] or 'file'
end

local function task_for(sub)
  redis.call('XADD', tasks, '*', 'dir', path(sub), 'pass', pass, 'depth', depth + 1)
end

n = tonumber(ARGV[pos])
for i = pos + 1, pos + n do
  local sub = ARGV[i]
  present[sub] = true
  task_for(sub)
  local was = cached[sub]
  if not deletions then was = redis.call('HGET', seen, sub) end
  if was ~= 'd' then
    if was then
      -- A file replaced by a directory: the file went. Its event's ack marks the name a
      -- directory (until then the next pass would find the file gone again).
      redis.call('XADD', events, '*', 'sluice:kind', 'file-deleted', 'sluice:source', root,
        'sluice:settle-key', seen, 'sluice:settle-field', sub, 'sluice:settle-value', 'd',
        'path', path(sub), 'type', type_of(was))
      deleted = deleted + 1
    else
      redis.call('HSET', seen, sub, 'd')
    end
    if dir_events then
      redis.call('XADD', events, '*', 'sluice:kind', 'dir-created', 'sluice:source', root,
        'path', path(sub), 'type', 'dir')
    end
  end
end
pos = pos + n + 1

n = tonumber(ARGV[pos])
for i = pos + 1, pos + n do
  redis.call('XADD', tasks, '*', 'dir', dir, 'pass', pass, 'depth', depth, 'names', ARGV[i])
end
pos = pos + n + 1

-- The files: compare, and an event for each one changed.
local names, sigs, at = {}, {}, {}
while pos <= #ARGV do
  local name, sig, f = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 2])
  names[#names + 1], sigs[#sigs + 1], at[#at + 1] = name, sig, pos + 3
  pos = pos + 3 + 2 * f
end
if compare and not deletions and #names > 0 then
  local old = redis.call('HMGET', seen, unpack(names))
  for i, name in ipairs(names) do cached[name] = old[i] or nil end
end
for i, name in ipairs(names) do
  files = files + 1
  present[name] = true
  local was = cached[name]
  if compare and was == sigs[i] then
    unchanged = unchanged + 1
  else
    changed = changed + 1
    -- A directory replaced by a file: what the cache has under it went.
    if was == 'd' then task_for(name) end
    local kind = (was and was ~= 'd') and 'file-modified' or 'file-created'
    local f = tonumber(ARGV[at[i] - 1])
    redis.call('XADD', events, '*', 'sluice:kind', kind, 'sluice:source', root,
      'sluice:settle-key', seen, 'sluice:settle-field', name, 'sluice:settle-value', sigs[i],
      'path', path(name), unpack(ARGV, at[i], at[i] + 2 * f - 1))
  end
end

-- What the cache has that is no longer there.
if deletions then
  for name, was in pairs(cached) do
    if not present[name] then
      deleted = deleted + 1
      if was == 'd' then
        -- A gone subdirectory: its own task finds it gone and deletes what it held.
        task_for(name)
        redis.call('HDEL', seen, name)
        if dir_events then
          redis.call('XADD', events, '*', 'sluice:kind', 'dir-deleted', 'sluice:source', root,
            'path', path(name), 'type', 'dir')
        end
      else
        redis.call('XADD', events, '*', 'sluice:kind', 'file-deleted', 'sluice:source', root,
          'sluice:settle-key', seen, 'sluice:settle-field', name, 'sluice:settle-value', '',
          'path', path(name), 'type', type_of(was))
      end
    end
  end
end

if ARGV[9] == '1' then redis.call('HINCRBY', job, 'scan_dirs', 1) end
redis.call('HINCRBY', job, 'scan_files', files)
redis.call('HINCRBY', job, 'scan_changed', changed)
redis.call('HINCRBY', job, 'scan_unchanged', unchanged)
redis.call('HINCRBY', job, 'scan_deleted', deleted)
redis.call('HINCRBY', job, 'scan_excluded', tonumber(ARGV[10]))
redis.call('HINCRBY', job, 'scan_unreadable', tonumber(ARGV[11]))
redis.call('XACK', tasks, group, task)
redis.call('XDEL', tasks, task)
return {files, changed, unchanged, deleted}
