-- needs: read
-- KEYS: convs. ARGV: tag, start bound, page size. Returns {more, member1, row1, ...}.
local n = tonumber(ARGV[3])
local members = redis.call('ZRANGE', KEYS[1], ARGV[2], '-', 'BYLEX', 'REV', 'LIMIT', 0, n + 1)
local out = {0}
if #members > n then out[1] = 1 end
for i = 1, math.min(n, #members) do
  out[#out + 1] = members[i]
  out[#out + 1] = conversation(ARGV[1] .. ':conv:' .. string.sub(members[i], 17))
end
return out
