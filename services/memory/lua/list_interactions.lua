-- KEYS: conv, ints. ARGV: user, tag, start bound, page size.
-- Returns nil when the conversation is not the caller's, else {last id or '', data1, ...}
-- where the last id is set only when more items follow.
if redis.call('HGET', KEYS[1], 'user') ~= ARGV[1] then return false end
local n = tonumber(ARGV[4])
local ids = redis.call('ZRANGE', KEYS[2], ARGV[3], '-', 'BYLEX', 'REV', 'LIMIT', 0, n + 1)
local out = {''}
if #ids > n then out[1] = ids[n] end
for i = 1, math.min(n, #ids) do
  out[i + 1] = redis.call('HGET', ARGV[2] .. ':int:' .. ids[i], 'data')
end
return out
