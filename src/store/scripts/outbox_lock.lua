-- Take or renew a job's outbox forwarding lock (see src/store/forward.rs), in one step.
-- KEYS[1] the lock   ARGV[1] this host's consumer name   ARGV[2] how long it holds (ms)
-- Returns 1 while this host holds the lock, 0 when another does.
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
