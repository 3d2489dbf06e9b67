-- Read new entries of a job with `flow.order_by` (src/store/flow.rs), and in the same atomic
-- step append each entry's id to the list of its key's pending entries: the lists hold every
-- key's entries in stream order, whichever host read them, and only a list's first entry is
-- handled (order_heads.lua); the commit removes an entry once it is done.
-- KEYS[1] the stream
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] count   ARGV[4] the field ordered by
-- ARGV[5] the prefix of the lists (`<job key>:order:`), completed by the field's value with
-- every byte outside ASCII 33-126, `#` and `%` written `%XX`, or, for a value over 128
-- bytes, `#` and its SHA-1 (src/store/stream/flow.rs `flow_part`)
-- Returns {the XREADGROUP reply (an empty table when nothing was new), the stream's last id}.
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], '>')
if not reply then
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  return {{}, last and last[1] or '0-0'}
end
local field, prefix = ARGV[4], ARGV[5]
local function part(v)
  if #v > 128 then return '#' .. redis.sha1hex(v) end
  return (string.gsub(v, '[^\33-\34\36\38-\126]', function(c)
    return string.format('%%%02X', string.byte(c))
  end))
end
for _, entry in ipairs(reply[1][2]) do
  local fields = entry[2]
  if fields then
    for i = 1, #fields, 2 do
      if fields[i] == field then
        redis.call('RPUSH', prefix .. part(fields[i + 1]), entry[1])
        break
      end
    end
  end
end
return {reply, ''}
