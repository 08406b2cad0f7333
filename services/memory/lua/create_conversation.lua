-- KEYS: conv, convs. ARGV: user, name, now_ms, list member. Returns 1, or 0 if it exists.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'name', ARGV[2], 'create_time', ARGV[3],
           'update_time', ARGV[3], 'interaction_count', 0)
redis.call('ZADD', KEYS[2], 0, ARGV[4])
return 1
