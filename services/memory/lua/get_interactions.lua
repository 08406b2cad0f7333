-- needs: read
-- KEYS: int keys (one owner's: one slot). ARGV: user, tag.
-- Returns one entry per key: the data, or false when missing or not the caller's.
local out = {}
local owners = {}
for i, key in ipairs(KEYS) do
  local row = interaction(key)
  local ok = false
  if row[1] then
    local user = owners[row[1]]
    if user == nil then
      user = redis.call('HGET', ARGV[2] .. ':conv:' .. row[1], 'user') or false
      owners[row[1]] = user
    end
    if user == ARGV[1] then ok = row[2] end
  end
  out[i] = ok
end
return out
