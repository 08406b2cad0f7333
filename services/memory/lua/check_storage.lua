-- needs: read keys usage retention new_conversation
-- CheckStorage: whether one more turn fits, writing nothing of it (as create_interaction
-- and, for a new conversation, create_conversation decide; a reconcile of expired
-- conversations, or a measure, due first stops it as it stops theirs: usage.lua).
-- KEYS: convs, then conv when the turn goes to an existing conversation, then usage, then
-- any key a run before asked to declare (at the cap on turns or the byte limit: the
-- conversation's list of turns, when it has turns, and the window's turns: retention.lua's
-- room_for_turn, usage.lua's gone_turns and gone_elsewhere). Every key it touches is
-- declared, and none that may be missing (a conversation without turns has no list): a
-- key declared and missing makes Redis refuse the run mid-reshard (TRYAGAIN).
-- ARGV: caller (read.lua), tag, cid ('' for a new conversation), the turn's known bytes
-- (without its fixed overhead), max bytes, max conversations (of the owner), '1' when the
-- bytes are instead a new summary's length for cid (update_summary's check: only its
-- growth over the current summary counts), max turns per conversation, eviction grace
-- (turns), then the window of the check for gone turns at the limit (usage.lua's
-- gone_check_at: its offset, its turns).
-- Returns {status, used bytes, conversations}: status 0 not found (or not the caller's),
-- 1 fits, 2 at the conversation limit, 3 does not fit the owner's bytes, 4 the
-- conversation holds the most turns allowed (create_interaction's room_for_turn).
gone_check_at(10)
local tag, cid = ARGV[2], ARGV[3]
local n = tonumber(ARGV[4]) + TURN_OVERHEAD
local status = 1
if cid ~= '' then
  if not callers(KEYS[2], ARGV[1]) then return {0, 0, 0} end
  if ARGV[7] == '1' then
    n = tonumber(ARGV[4]) - redis.call('HSTRLEN', KEYS[2], 'summary')
  else
    local count = tonumber(redis.call('HGET', KEYS[2], 'interaction_count') or '0')
    if not room_for_turn(tag, cid, count, tonumber(ARGV[8]), tonumber(ARGV[9])) then
      status = 4
    end
  end
  measure(tag, cid)
else
  if not conversation_room(tag, KEYS[1], tonumber(ARGV[6])) then status = 2 end
  n = n + CONVERSATION_OVERHEAD
end
if status == 1 then
  local fits
  if cid ~= '' then
    fits = room_in(tag, cid, n, tonumber(ARGV[5]))
  else
    fits = room_new(tag, n, tonumber(ARGV[5]))
  end
  if not fits then status = 3 end
end
local used = tonumber(redis.call('HGET', usage_key(tag), 'total') or '0')
return {status, used, redis.call('ZCARD', KEYS[1])}
