-- needs: read
-- KEYS: int keys (one owner's: one slot). ARGV: caller (read.lua), tag.
-- Returns one entry per key: 1 when the interaction exists and is the caller's, else 0.
-- Reads each turn's conversation id only, never its data: the index sweep asks this of
-- every entry of the index.
local out, seen = {}, {}
for i, key in ipairs(KEYS) do
  local cid = redis.call('HGET', key, 'conversation_id')
  out[i] = (cid and owned(ARGV[2], ARGV[1], cid, seen)) and 1 or 0
end
return out
