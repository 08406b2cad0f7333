-- needs: read
-- KEYS: conv, ints, then the page's turn keys (those the store expects, store.py's
-- RecentTurns; a run that lacks one asks for it: read.lua's declare_first).
-- ARGV: caller (read.lua), tag, start bound, page size, page byte budget, stop bound,
-- '1' for oldest first (the bounds are ZRANGE BYLEX's, in the page's order: newest first
-- from '+' or '(<cursor>' down to '-' or '(<after>'; oldest first from '-', '(<after>' or
-- '(<cursor>' up to '+').
-- Returns nil when the conversation is not the caller's; {0} when a turn it lists has no
-- key here (below); else {last id or '', m, id1, ..., idm, data1, ...}: the ids of the m
-- turns the page read (the store declares them up front next time), then the page, where
-- the last id is set only when more items follow. A page also ends before the item
-- that would take it over the byte budget (an item costs its data plus 5 bytes of protobuf
-- framing), so the reply always fits a gRPC message; it holds at least one item.
if not callers(KEYS[1], ARGV[1]) then return false end
local n = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
local ids
if ARGV[7] == '1' then
  ids = redis.call('ZRANGE', KEYS[2], ARGV[3], ARGV[6], 'BYLEX', 'LIMIT', 0, n + 1)
else
  ids = redis.call('ZRANGE', KEYS[2], ARGV[3], ARGV[6], 'BYLEX', 'REV', 'LIMIT', 0, n + 1)
end
-- The page's turns are read only declared (read.lua's declare_first: a run that lacks
-- one names them, and the store runs it again with them declared).
local m = math.min(n, #ids)
local names = {}
for i = 1, m do names[i] = ARGV[2] .. ':int:' .. ids[i] end
declare_first(names)
local out = {'', m}
for i = 1, m do out[i + 2] = ids[i] end
local used = 0
for i = 1, m do
  local data = redis.call('HGET', names[i], 'data')
  -- Listed but not here: gone for good (evicted, deleted by hand, kept shorter than its
  -- conversation by older data), or, mid-reshard on the slot's new node, not moved yet.
  -- Only a run that declares every turn may tell (drop_missing.lua, which Redis refuses
  -- while they are split): never a page with a turn missing, never UNAVAILABLE for good.
  if not data then return {0} end
  used = used + #data + 5
  if i > 1 and used > budget then
    out[1] = ids[i - 1]
    return out
  end
  out[m + 2 + i] = data
end
if #ids > n then out[1] = ids[n] end
return out
