-- KEYS: int. ARGV: user, tag. Returns {traces or ''}, or nil when missing or not the
-- caller's.
local row = redis.call('HMGET', KEYS[1], 'conversation_id', 'traces')
if not row[1] or redis.call('HGET', ARGV[2] .. ':conv:' .. row[1], 'user') ~= ARGV[1] then
  return false
end
return {row[2] or ''}
