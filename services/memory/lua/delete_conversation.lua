-- needs: keys usage
-- KEYS: conv, ints, convs. ARGV: user, tag, cid. Returns 1, or 0 when not found.
-- The interaction keys are built from the tag: they share the conversation's hash slot.
local h = redis.call('HMGET', KEYS[1], 'user', 'update_time')
if h[1] ~= ARGV[1] then return 0 end
for _, iid in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  forget_interaction(ARGV[2], iid)
end
redis.call('UNLINK', unpack(conversation_keys(ARGV[2], ARGV[3])))
redis.call('ZREM', KEYS[3], string.format('%015d', tonumber(h[2])) .. ':' .. ARGV[3])
forget_usage(ARGV[2], ARGV[3])
return 1
