-- Keep entries this consumer is still handling from looking abandoned (see src/runner/read.rs):
-- for each id in ARGV[3..] still pending for ARGV[2] and idle for at least ARGV[1] ms, reset
-- its idle time (XCLAIM … JUSTID: no delivery counted). Entries another consumer took over
-- are left alone. KEYS[1] the source stream, KEYS[2] unused (slot), ARGV[2] the consumer,
-- ARGV[3] the group, ARGV[4..] the ids. Returns how many were refreshed.
local src, min_idle, consumer, group = KEYS[1], tonumber(ARGV[1]), ARGV[2], ARGV[3]
local refreshed = 0
for i = 4, #ARGV do
  local p = redis.call('XPENDING', src, group, 'IDLE', min_idle, ARGV[i], ARGV[i], 1, consumer)[1]
  if p then
    redis.call('XCLAIM', src, group, consumer, min_idle, ARGV[i], 'JUSTID')
    refreshed = refreshed + 1
  end
end
return refreshed
