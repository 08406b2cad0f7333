-- needs: read
-- KEYS: conv, ints. ARGV: caller (read.lua), tag, start bound, page size, page byte budget.
-- Returns nil when the conversation is not the caller's, else {last id or '', data1, ...}
-- where the last id is set only when more items follow. A page also ends before the item
-- that would take it over the byte budget (an item costs its data plus 5 bytes of protobuf
-- framing), so the reply always fits a gRPC message; it holds at least one item.
if not callers(KEYS[1], ARGV[1]) then return false end
local n = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
local ids = redis.call('ZRANGE', KEYS[2], ARGV[3], '-', 'BYLEX', 'REV', 'LIMIT', 0, n + 1)
local out = {''}
local used = 0
for i = 1, math.min(n, #ids) do
  local data = redis.call('HGET', ARGV[2] .. ':int:' .. ids[i], 'data')
  -- Listed but not here: a cluster reshard has not moved it to this node yet (the call
  -- reached the slot's new node by ASK). TRYAGAIN: the client asks again, then fails the
  -- call with UNAVAILABLE; never a page with a turn missing.
  if not data then return redis.error_reply('TRYAGAIN interaction not on this node yet') end
  used = used + #data + 5
  if i > 1 and used > budget then
    out[1] = ids[i - 1]
    return out
  end
  out[i + 1] = data
end
if #ids > n then out[1] = ids[n] end
return out
