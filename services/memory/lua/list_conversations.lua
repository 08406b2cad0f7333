-- needs: read usage
-- KEYS: convs. ARGV: tag, start bound, page size. Returns {more, member1, row1, ...}.
-- A member whose conversation hash is gone belongs to a conversation that expired (its
-- time to live); it is removed here, on the way (with its bytes, usage.lua), and the
-- page is filled from further on.
local n = tonumber(ARGV[3])
local start = ARGV[2]
local out = {0}
local found = 0
while true do
  local want = n + 1 - found
  local members = redis.call('ZRANGE', KEYS[1], start, '-', 'BYLEX', 'REV', 'LIMIT', 0, want)
  for _, member in ipairs(members) do
    local row = conversation(ARGV[1] .. ':conv:' .. string.sub(member, 17))
    if row[1] then
      if found == n then
        out[1] = 1
        return out
      end
      out[#out + 1] = member
      out[#out + 1] = row
      found = found + 1
    else
      redis.call('ZREM', KEYS[1], member)
      forget_usage(ARGV[1], string.sub(member, 17))
    end
  end
  if #members < want then return out end
  start = '(' .. members[#members]
end
