-- One aggregate's timer (src/store/aggregate.rs): every host running the job calls it. A
-- tumbling window whose time is up (D) fires `threshold-reached` (reason `time`) to the
-- fired stream and is dropped; a window idle for `idle` ms (S) is dropped without firing.
-- Both in one step with the commits that count into the windows: a window fires once.
-- KEYS[1] H (windows)   KEYS[2] D (due)   KEYS[3] S (seen)   KEYS[4] F (fired stream)
-- KEYS[5] the job hash
-- ARGV[1] name   ARGV[2] within (ms; 0: no time)   ARGV[3] idle (ms)   ARGV[4] now (ms)
-- Returns how many windows fired.
local H, D, S, F, J = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local name, within, idle = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local fired = 0
if within > 0 then
  for _, part in ipairs(redis.call('ZRANGEBYSCORE', D, '-inf', now, 'LIMIT', 0, 500)) do
    local v = redis.call('HGET', H, part)
    if v then
      local c, f, _, value = string.match(v, '^(%d+) (%d+) (%d+) (.*)$')
      redis.call('XADD', F, '*', 'sluice:kind', 'threshold-reached', 'sluice:source', name,
        'name', name, 'key', value, 'count', c, 'start', f,
        'end', string.format('%d', tonumber(f) + within), 'reason', 'time')
      redis.call('HINCRBY', J, 'agg:' .. name .. ':fired', 1)
      redis.call('HDEL', H, part)
      fired = fired + 1
    end
    redis.call('ZREM', D, part)
    redis.call('ZREM', S, part)
  end
end
for _, part in ipairs(redis.call('ZRANGEBYSCORE', S, '-inf', now - idle, 'LIMIT', 0, 500)) do
  redis.call('HDEL', H, part)
  redis.call('ZREM', D, part)
  redis.call('ZREM', S, part)
end
return fired
