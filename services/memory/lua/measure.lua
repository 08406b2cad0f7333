-- needs: read usage
-- Counts a conversation stored before the accounting (usage.lua's measure): its name,
-- summary and turns, every turn it reads declared, so while a reshard has them split
-- between the slot's two nodes Redis refuses the run (TRYAGAIN) rather than a turn not
-- moved yet counting as the bare overhead (store.MemoryStore._measure).
-- KEYS: conv, ints, usage, then the key of each turn ARGV names, in its order.
-- ARGV: tag, cid, then the conversation's turn ids as the store read them.
-- Returns 0 when its list of turns changed since the read (nothing done: the store reads
-- it again), else 1 (counted, or counted already, or no such conversation).
local tag, cid = ARGV[1], ARGV[2]
local usage = KEYS[3]
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', usage, cid) == 1 then
  return 1
end
local size, gone = stored_bytes(KEYS, ARGV)
if not size then return 0 end
-- A turn whose key is gone still has its entry in the list (until drop_missing.lua drops
-- it): it counts as the bare overhead.
size = size + #gone * TURN_OVERHEAD
redis.call('HSET', usage, cid, size)
redis.call('HINCRBY', usage, 'total', size)
return 1
