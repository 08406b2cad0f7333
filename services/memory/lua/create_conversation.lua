-- needs: keys retention
-- KEYS: conv, convs. ARGV: user, name, now_ms, list member, tag, cid, ttl_ms, max_turns,
-- summary_disabled ('1'/'0'). Returns the expire time (ms, 0: none), or -1 if it exists.
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'name', ARGV[2], 'create_time', ARGV[3],
           'update_time', ARGV[3], 'interaction_count', 0, 'ttl_ms', ARGV[7],
           'max_turns', ARGV[8], 'summary_disabled', ARGV[9])
redis.call('ZADD', KEYS[2], 0, ARGV[4])
renew(ARGV[5], ARGV[6], tonumber(ARGV[3]))
return tonumber(redis.call('HGET', KEYS[1], 'expire_time') or '0')
