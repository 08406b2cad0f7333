-- needs: read
-- GetConversation. KEYS: conv, ints. ARGV: caller (read.lua), tag.
-- Returns false when the conversation is not the caller's (or missing); else its row
-- (store.CONVERSATION_FIELDS) and then '1' when a turn it lists has no key here (read.lua's
-- missing_turn: the store drops it with drop_missing.lua and reads again, so the count
-- never includes a turn that is gone), '0' otherwise.
if not callers(KEYS[1], ARGV[1]) then return false end
local row = conversation(KEYS[1])
local _, missing = missing_turn(ARGV[2], KEYS[2])
row[#row + 1] = missing and '1' or '0'
return row
