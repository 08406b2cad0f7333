-- needs: read
-- KEYS: int. ARGV: user, tag. Returns the data, or nil when missing or not the caller's.
local row = interaction(KEYS[1])
if not row[1] or redis.call('HGET', ARGV[2] .. ':conv:' .. row[1], 'user') ~= ARGV[1] then
  return false
end
return row[2]
