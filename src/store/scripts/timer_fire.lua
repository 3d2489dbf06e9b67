-- A timer job's tick (src/store/timer.rs): append the `tick` of due time ARGV[1], once per
-- due time across the fleet, whichever host's call comes first. The host read the last due
-- time ticked (`timer_last`) and counted the due times missed since (ARGV[2]): the tick is
-- appended only if `timer_last` is still what it read (ARGV[4]), so `missed` is exact even
-- when two hosts race. The job's first call only records where it starts (the next due time
-- is the first tick). Missed due times (no host ran the job) are counted, not replayed.
-- KEYS[1] the job hash   KEYS[2] the timer stream
-- ARGV[1] the due time (ms since the epoch)   ARGV[2] due times missed between the last and
-- this one (not replayed)   ARGV[3] the source (`every:<period>`, `cron:<expression>`)
-- ARGV[4] the `timer_last` the host read ('' for none)   ARGV[5..] missed due times to
-- deliver first, oldest first (a job with `catch_up`), each a tick of its own
-- Returns 1 when it appended the tick, 0 when it or a later one was, -1 when `timer_last`
-- moved since the host read it (read again and retry).
local last = redis.call('HGET', KEYS[1], 'timer_last') or ''
if last ~= ARGV[4] then return -1 end
if last == '' then
  redis.call('HSET', KEYS[1], 'timer_last', ARGV[1])
  return 0
end
if tonumber(last) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'timer_last', ARGV[1])
for i = 5, #ARGV do
  redis.call('XADD', KEYS[2], '*', 'sluice:kind', 'tick', 'sluice:source', ARGV[3],
    'due', ARGV[i], 'missed', '0')
end
redis.call('XADD', KEYS[2], '*', 'sluice:kind', 'tick', 'sluice:source', ARGV[3],
  'due', ARGV[1], 'missed', ARGV[2])
return 1
