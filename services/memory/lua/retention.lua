-- Helper (after keys.lua and usage.lua): the sliding time to live. A conversation with
-- ttl_ms > 0 expires at expire_time = last activity + ttl: its own keys get exactly that
-- (PEXPIREAT, O(1) per turn). Its interactions' keys get a later time, renewed_until
-- (expire_time + ttl at the last renewal), and are renewed all at once only when
-- expire_time passes it, i.e. at most once per ttl of activity: a turn costs O(1), not
-- O(turns). Nothing reads an interaction without its conversation hash (get_interaction
-- checks it), so a turn is gone when its conversation expires; its key is freed at most
-- one ttl later.
-- Returns the expiry (ms) a new key of the conversation's interactions must get, or 0.
local function renew(tag, cid, now)
  local conv = tag .. ':conv:' .. cid
  local h = redis.call('HMGET', conv, 'ttl_ms', 'renewed_until')
  local ttl = tonumber(h[1] or '0') or 0
  if ttl <= 0 then return 0 end
  local expire = now + ttl
  for _, key in ipairs(conversation_keys(tag, cid)) do redis.call('PEXPIREAT', key, expire) end
  expires_at(tag, expire)
  local renewed = tonumber(h[2] or '0') or 0
  if expire > renewed then
    renewed = expire + ttl
    for _, iid in ipairs(redis.call('ZRANGE', conv .. ':ints', 0, -1)) do
      for _, key in ipairs(interaction_keys(tag, iid)) do
        redis.call('PEXPIREAT', key, renewed)
      end
    end
  end
  redis.call('HSET', conv, 'expire_time', string.format('%d', expire),
             'renewed_until', string.format('%d', renewed))
  return renewed
end
-- No time to live any more: every key of the conversation is kept.
local function persist(tag, cid)
  local conv = tag .. ':conv:' .. cid
  for _, key in ipairs(conversation_keys(tag, cid)) do redis.call('PERSIST', key) end
  for _, iid in ipairs(redis.call('ZRANGE', conv .. ':ints', 0, -1)) do
    for _, key in ipairs(interaction_keys(tag, iid)) do redis.call('PERSIST', key) end
  end
  redis.call('HSET', conv, 'expire_time', 0, 'renewed_until', 0)
end
-- The oldest turns beyond max_turns are evicted once the summary covers them (or at once
-- when the conversation has no summary). If no summary covers them for `grace` more
-- turns (the summariser is down or no client writes one), they go anyway and are counted
-- in summary_evicted: storage stays bounded either way. Evicted bytes are given back to
-- the owner's accounting (usage.lua).
local function evict(tag, cid, grace)
  local conv = tag .. ':conv:' .. cid
  local h = redis.call('HMGET', conv, 'max_turns', 'summary_through', 'summary_disabled',
                      'interaction_count', 'summary_evicted')
  local max = tonumber(h[1] or '0') or 0
  local count = tonumber(h[4] or '0') or 0
  if max <= 0 or count <= max then return 0 end
  local through = h[2] or ''
  local off = h[3] == '1'
  local ints = conv .. ':ints'
  local n, lost, freed = 0, 0, 0
  for _, iid in ipairs(redis.call('ZRANGE', ints, 0, count - max - 1)) do
    if not (off or (through ~= '' and iid <= through)) then
      if count - n <= max + grace then break end
      lost = lost + 1
    end
    freed = freed + turn_bytes(tag, iid)
    forget_interaction(tag, iid)
    redis.call('ZREM', ints, iid)
    n = n + 1
  end
  if n > 0 then
    redis.call('HSET', conv, 'interaction_count', count - n,
               'summary_evicted', (tonumber(h[5] or '0') or 0) + lost)
    count_bytes(tag, cid, -freed)
  end
  return n
end
-- Whether a conversation holding `count` turns may take one more under the service's cap
-- on turns per conversation (`cap`): below it, or when the eviction after the new turn
-- (`evict` above, with the same `grace`) drops at least one, so the count does not grow.
-- O(1): only the oldest turn decides whether evict drops one.
local function room_for_turn(tag, cid, count, cap, grace)
  if count < cap then return true end
  local conv = tag .. ':conv:' .. cid
  local h = redis.call('HMGET', conv, 'max_turns', 'summary_through', 'summary_disabled')
  local max = tonumber(h[1] or '0') or 0
  if max <= 0 or count + 1 <= max then return false end
  if h[3] == '1' or count + 1 > max + grace then return true end
  local through = h[2] or ''
  local oldest = redis.call('ZRANGE', conv .. ':ints', 0, 0)[1]
  return through ~= '' and oldest ~= nil and oldest <= through
end
