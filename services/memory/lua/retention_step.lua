-- needs: read keys usage retention
-- The next batch of a conversation's pending walk of its turns (retention.lua), renewing
-- from its last activity (update_time): not activity itself.
-- KEYS: conv. ARGV: user, tag, cid.
-- Returns the conversation (store.CONVERSATION_FIELDS) and '1' while a walk is still
-- pending ('0' once done), nil when not found.
local h = redis.call('HMGET', KEYS[1], 'user', 'update_time')
if h[1] ~= ARGV[1] then return false end
local _, walking = renew(ARGV[2], ARGV[3], tonumber(h[2]))
local row = conversation(KEYS[1])
table.insert(row, walking)
return row
