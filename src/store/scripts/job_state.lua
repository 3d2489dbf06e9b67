-- Compare-and-set a job's registry entry (see src/store/control.rs `change_state`): written
-- only if neither the entry nor its run changed since it was read.
-- KEYS[1] the registry's jobs hash   KEYS[2] its runs hash
-- ARGV[1] job name   ARGV[2] the entry as read   ARGV[3] the run as read   ARGV[4] the new entry
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if (redis.call('HGET', KEYS[2], ARGV[1]) or '0') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
return 1
