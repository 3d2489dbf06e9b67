-- A timer job's tick (src/store/timer.rs): append the `tick` of due time ARGV[1] unless it,
-- or a later one, was appended already: once per due time across the fleet, whichever
-- host's call comes first. The job's first call only records where it starts (the next due
-- time is the first tick). Due times missed meanwhile (no host ran the job) are counted in
-- the tick's `missed`, not replayed.
-- KEYS[1] the job hash   KEYS[2] the timer stream
-- ARGV[1] the due time (ms since the epoch, a multiple of the period)   ARGV[2] the period
-- (ms)   ARGV[3] the source (`every:<period>`)
-- Returns 1 when it appended the tick, 0 otherwise.
local due, period = tonumber(ARGV[1]), tonumber(ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[1], 'timer_last') or '')
if last == nil then
  redis.call('HSET', KEYS[1], 'timer_last', ARGV[1])
  return 0
end
if last >= due then return 0 end
local missed = math.floor((due - last) / period) - 1
if missed < 0 then missed = 0 end
redis.call('HSET', KEYS[1], 'timer_last', ARGV[1])
redis.call('XADD', KEYS[2], '*', 'sluice:kind', 'tick', 'sluice:source', ARGV[3],
  'due', ARGV[1], 'missed', string.format('%d', missed))
return 1
