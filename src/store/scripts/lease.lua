-- Take, renew or let go of a lease that one host of a fleet holds at a time, in one step
-- each: a job's outbox forwarding lock (src/store/forward.rs), a channel job's subscription
-- (src/store/channel.rs). KEYS[1] the lease   ARGV[1] this holder's token   ARGV[2] how
-- long it holds (ms), or 'release' to let it go if it is still this holder's.
-- Returns 1 while this holder holds it (or let it go now), 0 when another holds it.
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
