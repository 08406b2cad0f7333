-- needs: read
-- KEYS: int, then any key a run before asked to declare (read.lua's declare_first: its
-- conversation hash). ARGV: caller (read.lua), tag. Returns the data, or nil when missing
-- or not the caller's.
local row = interaction(KEYS[1])
if not row[1] or not declared_owned(ARGV[2], ARGV[1], row[1]) then
  return false
end
return row[2]
