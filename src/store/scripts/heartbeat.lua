-- A host's heartbeat (see src/store/hosts.rs `beat`): its record, the time Redis saw it, and
-- hosts unseen for longer than ARGV[3] ms forgotten. Redis's clock, so hosts' clocks need not
-- agree.
-- KEYS[1] the hosts hash   KEYS[2] the hosts' last-seen sorted set
-- ARGV[1] consumer name   ARGV[2] its record (JSON)   ARGV[3] forget after (ms)
-- Returns the time of the beat (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
for _, consumer in ipairs(gone) do
  redis.call('HDEL', KEYS[1], consumer)
  redis.call('ZREM', KEYS[2], consumer)
end
return now
