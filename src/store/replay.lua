-- Move dead letters back to the source stream as new entries (see src/store/dlq.rs).
-- KEYS[1] the dead-letter stream   KEYS[2] the source stream
-- ARGV    the dead-letter entry ids to replay
-- A dead letter's fields are 6 metadata pairs written by commit.lua, then the original
-- fields; the original fields are appended to the source (a new entry: delivery count 1)
-- and the dead letter is deleted, both in this one step. Returns, per id, the new entry id,
-- or '' if there was no such dead letter or it had no original fields (left in place).
local out = {}
for i, id in ipairs(ARGV) do
  out[i] = ''
  local e = redis.call('XRANGE', KEYS[1], id, id)[1]
  if e and #e[2] > 12 then
    local original = {}
    for j = 13, #e[2] do original[#original + 1] = e[2][j] end
    out[i] = redis.call('XADD', KEYS[2], '*', unpack(original))
    redis.call('XDEL', KEYS[1], id)
  end
end
return out
