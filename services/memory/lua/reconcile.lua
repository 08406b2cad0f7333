-- needs: read usage
-- Drops from the owner's list, and from its accounting, the conversations whose hash is
-- gone (expired), every hash it reads declared: while a reshard has them split between
-- the slot's two nodes Redis refuses the run (TRYAGAIN), so a hash not moved yet is never
-- read as gone (usage.lua; store.MemoryStore._reconcile).
-- KEYS: convs, usage, then the hash of each conversation ARGV names, in its order.
-- ARGV: tag, '1' for the whole walk, then members of the owner's list
-- ("<update_ms:015d>:<cid>").
-- The whole walk (a write found it due: usage.lua's reconcile) names every member of the
-- list as the store read it; it also sets next_expiry, the earliest expiry it saw. When
-- the list changed since the read it does nothing and returns 0 (the store reads it again).
-- Otherwise (ListConversations found these hashes gone) it drops those still gone, and
-- returns 2 when one is here after all (the page script ran on a node the hash had not
-- reached, and the move ended since: the store reads the page again), else 1.
local tag, whole = ARGV[1], ARGV[2] == '1'
local convs, usage = KEYS[1], KEYS[2]
if whole then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  -- Another call walked since the write that asked: nothing due any more.
  if now < tonumber(redis.call('HGET', usage, 'next_expiry') or '0') then return 1 end
  local members = redis.call('ZRANGE', convs, 0, -1)
  if #members ~= #ARGV - 2 then return 0 end
  for i, member in ipairs(members) do
    if member ~= ARGV[2 + i] then return 0 end
  end
  local soonest = NEVER
  for i, member in ipairs(members) do
    -- The key's own expiry (PTTL: -1 none), not its expire_time field: a hash that is
    -- here expires later than now, so the write run again after this walk finds the walk
    -- no longer due unless a conversation really expired in between.
    local left = redis.call('PTTL', KEYS[2 + i])
    if left == -2 then
      redis.call('ZREM', convs, member)
      forget_usage(tag, string.sub(member, 17))
    elseif left >= 0 and now + left < soonest then
      soonest = now + left
    end
  end
  if redis.call('EXISTS', convs) == 1 then
    redis.call('HSET', usage, 'next_expiry', string.format('%d', soonest))
  end
  return 1
end
local alive = false
for i = 3, #ARGV do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    alive = true
  elseif redis.call('ZREM', convs, ARGV[i]) == 1 then
    forget_usage(tag, string.sub(ARGV[i], 17))
  end
end
return alive and 2 or 1
