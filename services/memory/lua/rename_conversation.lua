-- needs: read touch
-- KEYS: conv, convs. ARGV: user, name, now_ms, cid. Returns the updated hash, or nil.
local h = redis.call('HMGET', KEYS[1], 'user', 'update_time')
if h[1] ~= ARGV[1] then return false end
redis.call('HSET', KEYS[1], 'name', ARGV[2])
touch(KEYS[1], KEYS[2], ARGV[4], ARGV[3], h[2])
return conversation(KEYS[1])
