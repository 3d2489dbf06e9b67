-- Append the entries of one HTTP ingest request (src/host/admin/ingest.rs) to a stream: all
-- of them or, when the key holds another type, none.
--
-- KEYS[1] the stream
-- ARGV per entry: n, then n name/value pairs (2n arguments)
-- Returns the entries' ids, in order; SLUICE_BADTARGET <type> (nothing written) when the key
-- holds something other than a stream.
local ARGV, KEYS, tonumber, unpack = ARGV, KEYS, tonumber, unpack
local stream = KEYS[1]

local kind = redis.call('TYPE', stream).ok
if kind ~= 'stream' and kind ~= 'none' then
  return redis.error_reply('SLUICE_BADTARGET ' .. kind)
end

local ids = {}
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  ids[#ids + 1] = redis.call('XADD', stream, '*', unpack(ARGV, i + 1, i + 2 * n))
  i = i + 1 + 2 * n
end
return ids
