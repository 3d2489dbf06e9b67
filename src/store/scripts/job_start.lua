-- Register a job and mark it running, as a new run (see src/store/control.rs `start_job`).
-- KEYS[1] the registry's jobs hash   KEYS[2] its runs hash
-- ARGV[1] job name   ARGV[2] the entry (JSON)   ARGV[3] '1': only if no job of that name exists
-- Returns 0 (exists, left alone), -1 (a job of that name is running), else the new run.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  if ARGV[3] == '1' then return 0 end
  local ok, entry = pcall(cjson.decode, current)
  if ok and type(entry) == 'table' and entry.state == 'running' then return -1 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
