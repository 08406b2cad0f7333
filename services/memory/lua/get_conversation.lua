-- needs: read
-- GetConversation. KEYS: conv, then ints unless the store expects no turns (a
-- conversation without turns has no list, and a key declared and missing makes Redis
-- refuse the run for as long as a reshard moves the slot: TRYAGAIN; a run that needs it
-- asks for it), then the window's turn keys (those the store expects, store.py's
-- RecentTurns; a run that lacks one asks for it: read.lua's missing_turn). ARGV: caller
-- (read.lua), tag, then where the check for a gone turn starts and how many turns it
-- checks (read.lua's missing_turn: a window), then where the next call's window starts (the store draws it one call ahead, so that this call can name
-- that window's turns and the next one declare them up front).
-- Returns false when the conversation is not the caller's (or missing); else its row
-- (store.CONVERSATION_FIELDS) and then '1' when a turn of the window has no key here (the
-- store drops such turns with drop_missing.lua and reads again, so the count it answers
-- never includes a turn found gone), '0' otherwise; then the next window: its start as a
-- position in the list as it is now (turns appended meanwhile leave the window where it
-- is, or join it as it wraps), and '=' when its turns are exactly the turn keys this run
-- declared, else their ids.
if not callers(KEYS[1], ARGV[1]) then return false end
local row = conversation(KEYS[1])
local ints = KEYS[1] .. ':ints'
local window = tonumber(ARGV[4])
local _, missing = missing_turn(ARGV[2], ints, tonumber(ARGV[3]), window)
row[#row + 1] = missing and '1' or '0'
local n = 0
if tonumber(row[5] or '0') > 0 then
  declare_first({ints})
  n = redis.call('ZCARD', ints)
end
local start = 0
if n > 0 then start = tonumber(ARGV[5]) % n end
row[#row + 1] = start
local ids = {}
if n > 0 then ids = turn_window(ints, start, window) end
local turn_keys = #KEYS - 1
if declared(ints) then turn_keys = turn_keys - 1 end
local same = #ids == turn_keys
for _, iid in ipairs(ids) do
  if not same then break end
  same = declared(ARGV[2] .. ':int:' .. iid)
end
if same then
  row[#row + 1] = '='
else
  for _, iid in ipairs(ids) do row[#row + 1] = iid end
end
return row
