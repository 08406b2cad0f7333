-- needs: read touch keys retention
-- KEYS: conv, convs. ARGV: user, tag, cid, now_ms, eviction grace, then for name, ttl_ms,
-- max_turns, summary_disabled a pair each: '1' and the value to set it, '0' and '' not to.
-- Returns the updated hash, or nil when not found. Counts as activity (renews the ttl).
local h = redis.call('HMGET', KEYS[1], 'user', 'update_time')
if h[1] ~= ARGV[1] then return false end
local tag, cid, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
if ARGV[6] == '1' then redis.call('HSET', KEYS[1], 'name', ARGV[7]) end
if ARGV[10] == '1' then redis.call('HSET', KEYS[1], 'max_turns', ARGV[11]) end
if ARGV[12] == '1' then redis.call('HSET', KEYS[1], 'summary_disabled', ARGV[13]) end
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[1], 'ttl_ms', ARGV[9])
  if tonumber(ARGV[9]) == 0 then
    persist(tag, cid)
  else
    -- A new ttl may be shorter: every interaction key is set again by renew.
    redis.call('HSET', KEYS[1], 'renewed_until', 0)
  end
end
touch(KEYS[1], KEYS[2], cid, ARGV[4], h[2])
evict(tag, cid, tonumber(ARGV[5]))
renew(tag, cid, now)
return conversation(KEYS[1])
