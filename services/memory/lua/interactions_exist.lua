-- needs: read
-- KEYS: the int keys ARGV counts (one owner's: one slot), then any key a run before asked
-- to declare (read.lua's declare_first: their conversation hashes). ARGV: caller
-- (read.lua), tag, the number of int keys.
-- Returns one entry per int key: 1 when the interaction exists and is the caller's, else
-- 0. Reads each turn's conversation id only, never its data: the index sweep asks this of
-- every entry of the index (and removes those it answers 0 for).
local out, seen, missing = {}, {}, {}
for i = 1, tonumber(ARGV[3]) do
  local cid = redis.call('HGET', KEYS[i], 'conversation_id')
  out[i] = (cid and owned_noting(ARGV[2], ARGV[1], cid, seen, missing)) and 1 or 0
end
declare_first(missing)
return out
