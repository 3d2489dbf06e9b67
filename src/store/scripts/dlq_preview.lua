-- A page of a job's dead letters with long field values cut inside Redis, so a listing moves
-- only what it shows (a dead letter can hold a whole large entry's fields).
-- KEYS[1] the job's dead-letter stream
-- ARGV[1] where to start ('-', or '(' .. id for after id)   ARGV[2] how many
-- ARGV[3] bytes kept of each value   ARGV[4] leading (meta) fields never cut
-- Returns {id, fields, cut} per entry: fields as XRANGE gives them, cut the 1-based field
-- value positions that were cut.
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])
local keep, meta = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for n, e in ipairs(entries) do
  local fields, cut = e[2], {}
  for i = 2 * meta + 2, #fields, 2 do
    if #fields[i] > keep then
      fields[i] = string.sub(fields[i], 1, keep)
      cut[#cut + 1] = i
    end
  end
  out[n] = {e[1], fields, cut}
end
return out
