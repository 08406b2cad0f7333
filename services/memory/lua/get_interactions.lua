-- needs: read
-- KEYS: the int keys ARGV counts (one owner's: one slot), then any key a run before asked
-- to declare (read.lua's declare_first: their conversation hashes). ARGV: caller
-- (read.lua), tag, the number of int keys.
-- Returns one entry per int key: the data, or false when missing or not the caller's.
local out, seen, missing = {}, {}, {}
for i = 1, tonumber(ARGV[3]) do
  local row = interaction(KEYS[i])
  local ok = false
  if row[1] and owned_noting(ARGV[2], ARGV[1], row[1], seen, missing) then ok = row[2] end
  out[i] = ok
end
declare_first(missing)
return out
