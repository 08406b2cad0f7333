-- needs: read
-- GetConversation. KEYS: conv, ints, then the window's turn keys (a run before asked to
-- declare them: read.lua's missing_turn). ARGV: caller (read.lua), tag, then where the check for
-- a gone turn starts and how many turns it checks (read.lua's missing_turn: a window).
-- Returns false when the conversation is not the caller's (or missing); else its row
-- (store.CONVERSATION_FIELDS) and then '1' when a turn of the window has no key here (the
-- store drops such turns with drop_missing.lua and reads again, so the count it answers
-- never includes a turn found gone), '0' otherwise.
if not callers(KEYS[1], ARGV[1]) then return false end
local row = conversation(KEYS[1])
local _, missing = missing_turn(ARGV[2], KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
row[#row + 1] = missing and '1' or '0'
return row
