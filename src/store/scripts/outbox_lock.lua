-- Take, renew or let go of a job's outbox forwarding lock (see src/store/forward.rs), in one
-- step each. KEYS[1] the lock   ARGV[1] this forwarder's token   ARGV[2] how long it holds
-- (ms), or 'release' to let it go if it is still this forwarder's.
-- Returns 1 while this forwarder holds the lock (or let it go now), 0 when another holds it.
local holder = redis.call('GET', KEYS[1])
if ARGV[2] == 'release' then
  if holder == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
