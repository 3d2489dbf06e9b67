-- Append messages a `channel:NAME` job's subscriber received to the job's channel stream
-- (src/store/channel.rs), only while its token still holds the job's subscription lease:
-- a subscriber whose lease lapsed (a paused or cut-off host) writes nothing, so one
-- message is never written by two subscribers. Each entry is `sluice:kind channel-message`,
-- `sluice:source <channel>`, `payload <message>` (src/store/stream/mod.rs, `Entries::Fed`).
--
-- KEYS[1] the lease   KEYS[2] the channel stream
-- ARGV[1] the subscriber's token, then (channel, message) pairs
-- Returns how many were appended; SLUICE_NOTHELD when the token does not hold the lease.
local KEYS, ARGV = KEYS, ARGV
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('SLUICE_NOTHELD the subscription lease is another host\'s')
end
local n = 0
for i = 2, #ARGV, 2 do
  redis.call('XADD', KEYS[2], '*', 'sluice:kind', 'channel-message', 'sluice:source', ARGV[i],
    'payload', ARGV[i + 1])
  n = n + 1
end
return n
