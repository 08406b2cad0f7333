-- needs: read usage
-- Drops from a conversation's list the turns whose key is gone for good (list_interactions,
-- get_conversation or list_conversations found one missing: read.lua's missing_turn): Redis evicted it (a maxmemory-policy other than noeviction), an
-- operator deleted it, or data from before kept it shorter than its conversation. Every
-- turn key it reads is declared, so while a reshard has them split between the slot's two
-- nodes Redis refuses the run (TRYAGAIN: UNAVAILABLE) rather than a turn not moved yet
-- being dropped (store.MemoryStore._drop_missing). The conversation's bytes are counted
-- again from what is left (usage.lua's stored_bytes, as measure.lua counts them): the
-- dropped turns' size is not known any more.
-- KEYS: conv, ints, usage, then the key of each turn ARGV names, in its order.
-- ARGV: caller (read.lua), cid, then the conversation's turn ids as the store read them.
-- Returns 0 when its list of turns changed since the read (nothing done: the store reads
-- it again), else 1 (dropped, or nothing to drop, or not the caller's conversation).
if not callers(KEYS[1], ARGV[1]) then return 1 end
local cid, usage = ARGV[2], KEYS[3]
local size, gone, count = stored_bytes(KEYS, ARGV)
if not size then return 0 end
if #gone == 0 then return 1 end
for _, iid in ipairs(gone) do redis.call('ZREM', KEYS[2], iid) end
redis.call('HSET', KEYS[1], 'interaction_count', count - #gone)
-- Not measured yet (stored before the accounting): its first write measures it.
local counted = redis.call('HGET', usage, cid)
if counted then
  redis.call('HSET', usage, cid, size)
  redis.call('HINCRBY', usage, 'total', size - tonumber(counted))
end
return 1
