-- Helper: the owner's storage accounting (docs/memory.md#storage-limits). One hash,
-- tag:usage, holds 'total' (the owner's stored bytes) and one field per conversation
-- (cid -> its bytes), beside tag:convs and in the same slot, so the script that writes
-- also checks and counts, atomically: two writes at the limit cannot both pass.
-- A conversation counts a fixed overhead plus its name and summary; a turn its serialized
-- data and traces plus a fixed overhead (the hash, the id list entry, the request id: the
-- overhead keeps a flood of tiny turns from filling Redis uncounted).
-- Expiry (retention) deletes a conversation's keys without a script, so its field stays
-- until `reconcile` finds its hash gone: done whenever a write would not fit, before it
-- is refused, so an expired conversation never keeps an owner full. The walk costs
-- O(conversations) (~20 ms for 10,000), so it is made only once a conversation may have
-- expired: 'next_expiry' (ms, Redis's clock, the one expiry uses) is the earliest
-- expire_time the last walk saw, lowered by renew (retention.lua) whenever it sets an
-- earlier one; absent (data from before, or never walked): walk. A full owner whose
-- conversations do not expire is refused in O(1), however often it tries.
local TURN_OVERHEAD = 256
local CONVERSATION_OVERHEAD = 256
local NEVER = 99999999999999  -- ms: year 5138

local function usage_key(tag)
  return tag .. ':usage'
end
local function turn_bytes(tag, iid)
  local key = tag .. ':int:' .. iid
  return redis.call('HSTRLEN', key, 'data') + redis.call('HSTRLEN', key, 'traces')
         + TURN_OVERHEAD
end
-- Adds n (may be negative) to a conversation that has a field, and to the total.
local function count_bytes(tag, cid, n)
  local usage = usage_key(tag)
  if n == 0 or redis.call('HEXISTS', usage, cid) == 0 then return end
  redis.call('HINCRBY', usage, cid, n)
  redis.call('HINCRBY', usage, 'total', n)
end
-- Drops a conversation's field (deleted or expired), giving its bytes back; called once
-- its member has left the owner's list. With the owner's last conversation gone the
-- whole hash goes (an empty list is no key either): nothing of the owner stays in Redis.
local function forget_usage(tag, cid)
  local usage = usage_key(tag)
  if redis.call('EXISTS', tag .. ':convs') == 0 then
    redis.call('DEL', usage)
    return
  end
  local n = redis.call('HGET', usage, cid)
  if n then
    redis.call('HDEL', usage, cid)
    redis.call('HINCRBY', usage, 'total', -tonumber(n))
  end
end
-- Removes the conversations whose hash expired from the owner's list and their bytes
-- from the accounting, when one may have: run only when a write would not fit.
local function reconcile(tag)
  local usage = usage_key(tag)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now < tonumber(redis.call('HGET', usage, 'next_expiry') or '0') then return end
  local convs = tag .. ':convs'
  local soonest = NEVER
  for _, member in ipairs(redis.call('ZRANGE', convs, 0, -1)) do
    local cid = string.sub(member, 17)
    local h = redis.call('HMGET', tag .. ':conv:' .. cid, 'user', 'expire_time')
    if not h[1] then
      redis.call('ZREM', convs, member)
      forget_usage(tag, cid)
    else
      local expire = tonumber(h[2] or '0') or 0
      if expire > 0 and expire < soonest then soonest = expire end
    end
  end
  if redis.call('EXISTS', convs) == 1 then
    redis.call('HSET', usage, 'next_expiry', string.format('%d', soonest))
  end
end
-- A conversation now expires at `expire` (ms): the next walk must not wait longer.
local function expires_at(tag, expire)
  local usage = usage_key(tag)
  local known = redis.call('HGET', usage, 'next_expiry')
  if known and expire < tonumber(known) then
    redis.call('HSET', usage, 'next_expiry', string.format('%d', expire))
  end
end
-- Whether n more bytes fit under the limit (reconciling first when they seem not to).
local function room(tag, n, limit)
  if n <= 0 then return true end
  local usage = usage_key(tag)
  if tonumber(redis.call('HGET', usage, 'total') or '0') + n <= limit then return true end
  reconcile(tag)
  return tonumber(redis.call('HGET', usage, 'total') or '0') + n <= limit
end
-- Counts conversation `cid` (which exists) if it is not yet: a conversation stored
-- before this accounting has no field; it is measured (O(its turns), once) and counted
-- from its first write (or check) on.
local function measure(tag, cid)
  local usage = usage_key(tag)
  if redis.call('HEXISTS', usage, cid) == 0 then
    local conv = tag .. ':conv:' .. cid
    local size = CONVERSATION_OVERHEAD + redis.call('HSTRLEN', conv, 'name')
                 + redis.call('HSTRLEN', conv, 'summary')
    for _, iid in ipairs(redis.call('ZRANGE', conv .. ':ints', 0, -1)) do
      size = size + turn_bytes(tag, iid)
    end
    redis.call('HSET', usage, cid, size)
    redis.call('HINCRBY', usage, 'total', size)
  end
end
-- A write that changes conversation `cid` (which exists) by n bytes: false, and nothing
-- counted, when it does not fit.
local function charge(tag, cid, n, limit)
  measure(tag, cid)
  if not room(tag, n, limit) then return false end
  count_bytes(tag, cid, n)
  return true
end
