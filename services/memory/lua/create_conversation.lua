-- needs: keys usage retention
-- KEYS: conv, convs. ARGV: user, name, now_ms, list member, tag, cid, ttl_ms, max_turns,
-- summary_disabled ('1'/'0'), max conversations, max bytes (of the owner).
-- Returns the expire time (ms, 0: none), -1 if it exists, -2 when the owner has
-- max conversations already, -3 when it does not fit the owner's bytes. Expired
-- conversations still listed do not count: reconcile drops them before refusing.
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local tag, cid = ARGV[5], ARGV[6]
local limit = tonumber(ARGV[10])
if redis.call('ZCARD', KEYS[2]) >= limit then
  reconcile(tag)
  if redis.call('ZCARD', KEYS[2]) >= limit then return -2 end
end
local size = CONVERSATION_OVERHEAD + #ARGV[2]
if not room(tag, size, tonumber(ARGV[11])) then return -3 end
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'name', ARGV[2], 'create_time', ARGV[3],
           'update_time', ARGV[3], 'interaction_count', 0, 'ttl_ms', ARGV[7],
           'max_turns', ARGV[8], 'summary_disabled', ARGV[9])
redis.call('ZADD', KEYS[2], 0, ARGV[4])
redis.call('HSET', usage_key(tag), cid, size)
redis.call('HINCRBY', usage_key(tag), 'total', size)
renew(tag, cid, tonumber(ARGV[3]))
return tonumber(redis.call('HGET', KEYS[1], 'expire_time') or '0')
