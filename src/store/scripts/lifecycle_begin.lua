-- Append `job-started` for a run, once (see src/store/lifecycle.rs `begin`).
-- KEYS[1] the job hash   KEYS[2] the job's lifecycle stream
-- ARGV[1] the run   ARGV[2] the job's consumer group
-- Runs only go up: a host acting on a run that is already over issues nothing.
if tonumber(redis.call('HGET', KEYS[1], 'lifecycle_run') or '0') >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'lifecycle_run', ARGV[1])
redis.call('HDEL', KEYS[1], 'finished_run')
pcall(redis.call, 'XGROUP', 'CREATE', KEYS[2], ARGV[2], '0', 'MKSTREAM')
redis.call('XADD', KEYS[2], '*', 'kind', 'job-started', 'run', ARGV[1])
return 1
