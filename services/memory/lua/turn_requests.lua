-- KEYS: int keys (one owner's: one slot). Returns each one's request_id, or false (none,
-- or no such turn): what delete_conversation.lua must declare besides the turns.
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HGET', key, 'request_id') or false
end
return out
