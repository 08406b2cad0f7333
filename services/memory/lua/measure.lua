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
local iids = redis.call('ZRANGE', KEYS[2], 0, -1)
if #iids ~= #ARGV - 2 then return 0 end
local size = CONVERSATION_OVERHEAD + redis.call('HSTRLEN', KEYS[1], 'name')
             + redis.call('HSTRLEN', KEYS[1], 'summary')
for i, iid in ipairs(iids) do
  if iid ~= ARGV[2 + i] then return 0 end
  size = size + redis.call('HSTRLEN', KEYS[3 + i], 'data')
         + redis.call('HSTRLEN', KEYS[3 + i], 'traces') + TURN_OVERHEAD
end
redis.call('HSET', usage, cid, size)
redis.call('HINCRBY', usage, 'total', size)
return 1
