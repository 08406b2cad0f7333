-- needs: read
-- KEYS: int. ARGV: caller (read.lua), tag. Returns the data, or nil when missing or not the
-- caller's.
local row = interaction(KEYS[1])
if not row[1] or not owned(ARGV[2], ARGV[1], row[1], {}) then
  return false
end
return row[2]
