-- needs: read keys usage retention new_conversation
-- KEYS: conv, convs, usage. ARGV: caller (read.lua), name, now_ms, tag, cid, ttl_ms, max_turns,
-- summary_disabled ('1'/'0'), max conversations, max bytes (of the owner).
-- Returns the expire time (ms, 0: none), -1 if it exists, -2 when the owner has
-- max conversations already, -3 when it does not fit the owner's bytes.
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local tag, cid = ARGV[4], ARGV[5]
if not conversation_room(tag, KEYS[2], tonumber(ARGV[9])) then return -2 end
if not room(tag, conversation_size(ARGV[2]), tonumber(ARGV[10])) then return -3 end
make_conversation(tag, cid, KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[6], ARGV[7],
                  ARGV[8])
renew(tag, cid, tonumber(ARGV[3]))
return tonumber(redis.call('HGET', KEYS[1], 'expire_time') or '0')
