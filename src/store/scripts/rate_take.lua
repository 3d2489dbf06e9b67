-- Rate limits of a job (`flow.rate_limit`, `flow.key_rate_limit`), fleet-wide: a GCRA per key
-- on Redis's clock (src/store/stream/flow.rs). Each key holds `<tat>:<interval>`: its
-- theoretical arrival time (µs) and the interval it was counted in. Taking n units moves the
-- TAT n intervals on, and the caller waits until the last of them conforms; giving units
-- back (n < 0: entries let go unhandled at a stop) moves it back, never before now. A key
-- counted at another rate (the job's limit changed) has what it owes counted again at the
-- new one. Nothing is refused: over the limit, the caller waits (its entries pending).
-- KEYS[i] a rate key (a key may come several times: one unit of it each)
-- ARGV[3i-2] its interval (µs)   ARGV[3i-1] units taken (may be 0 or negative)   ARGV[3i]
-- not before (ms from now, 0: none): the key's next unit waits at least that long (a
-- plugin's `retry(after)`)
-- Returns, per key, how long (ms) to wait before handling the units taken.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local interval, n = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  local not_before = tonumber(ARGV[3 * i])
  local stored = redis.call('GET', key) or ''
  local tat, was = string.match(stored, '^(%d+):(%d+)$')
  tat, was = tonumber(tat) or 0, tonumber(was) or interval
  if tat < now then tat = now end
  if was ~= interval then tat = now + (tat - now) / was * interval end
  if not_before > 0 and tat < now + not_before * 1000 then tat = now + not_before * 1000 end
  local wait = 0
  tat = tat + n * interval
  if tat < now then tat = now end
  if n > 0 then wait = tat - interval - now end
  if wait < 0 then wait = 0 end
  redis.call('SET', key, string.format('%d:%d', tat, interval), 'PX',
    math.floor((tat - now) / 1000) + 1000)
  out[i] = math.floor(wait / 1000)
end
return out
