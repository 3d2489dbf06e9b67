-- Delete a job's registry entry (see src/store/control/jobs.rs `delete_job`): only if it did
-- not change since it was read (the caller checked it was not running).
-- KEYS[1] the registry's jobs hash   KEYS[2] its runs hash
-- ARGV[1] job name   ARGV[2] the entry as read
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
