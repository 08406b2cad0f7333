-- needs: read
-- KEYS: int keys (one owner's: one slot). ARGV: caller (read.lua), tag.
-- Returns one entry per key: the data, or false when missing or not the caller's.
local out, seen = {}, {}
for i, key in ipairs(KEYS) do
  local row = interaction(key)
  local ok = false
  if row[1] and owned(ARGV[2], ARGV[1], row[1], seen) then ok = row[2] end
  out[i] = ok
end
return out
