-- Read a job's outbox for forwarding (see src/store/forward.rs), only while this forwarder
-- holds the lock: the check and the read are one step, so a forwarder that lost the lock
-- (paused past it) can never read entries after the ones its successor reads, and entries
-- reach each target in outbox order. Entries read before and not finished (by any
-- forwarder: one consumer name is shared) come first.
-- KEYS[1] the outbox   KEYS[2] the lock
-- ARGV[1] this forwarder's token   ARGV[2] the consumer group   ARGV[3] how many at most
-- ARGV[4] how long the lock holds from now (ms)
-- Returns the entries ({id, {name, value, …}} …), or SLUICE_NOTHELD.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('SLUICE_NOTHELD the lock is held by another forwarder')
end
local ok = pcall(redis.call, 'XGROUP', 'CREATE', KEYS[1], ARGV[2], '0', 'MKSTREAM')
-- Always a write (the lock renewed), after the read: a WAIT sent after this script waits for
-- everything before it, the commits that appended the entries read included, even when the
-- read itself wrote nothing (pending entries read again).
redis.call('PEXPIRE', KEYS[2], ARGV[4])
for _, from in ipairs({'0', '>'}) do
  local reply = redis.call('XREADGROUP', 'GROUP', ARGV[2], 'forwarder', 'COUNT', ARGV[3],
                           'STREAMS', KEYS[1], from)
  if reply and reply[1] and #reply[1][2] > 0 then return reply[1][2] end
end
return {}
