-- Delete a job's registry entry (see src/store/control/jobs.rs `delete_job`): only if it did
-- not change since it was read (the caller checked it was not running). Its run counter is
-- kept: a job of the same name started later goes on from it, so the job's keys (kept unless
-- purged) never see an older run again.
-- KEYS[1] the registry's jobs hash
-- ARGV[1] job name   ARGV[2] the entry as read
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
