-- needs: read usage
-- Counts a conversation stored before the accounting (usage.lua's measure): its name,
-- summary and turns, every turn it reads declared, so while a reshard has them split
-- between the slot's two nodes Redis refuses the run (TRYAGAIN) rather than a turn not
-- moved yet counting as the bare overhead (store.MemoryStore._measure). One run counts
-- one chunk of the list (at most the turns the store names, DROP_BATCH), so no run holds
-- Redis for O(turns); the store runs it chunk after chunk, in the list's order, carrying
-- the sum, and the last chunk sets the conversation's bytes (and adds them to the
-- owner's total). Until then the conversation has no bytes field, so every write that
-- charges it stops for this first (usage.lua's measure): only an eviction, an expiry or a
-- delete changes its turns meanwhile, and a chunk that finds fewer turns before it than
-- the chunks before counted makes the walk start over ({2}).
-- KEYS: conv, ints, usage, then the key of each turn ARGV names, in its order.
-- ARGV: tag, cid, the last id of the chunk before ('' for the first), how many turns the
-- list held up to it (0 for the first), the bytes summed so far, then the chunk's turn
-- ids as the store read them (the ids after the chunk before, in order).
-- Returns {1} done (counted, or counted already, or no such conversation), {0} the
-- chunk's ids are not the list's any more (nothing done: the store reads them again),
-- {2} turns before the chunk changed since the walk began (the store starts over),
-- {3, through, sum} go on after this chunk (through: the turns up to its last).
local cid, after, through, sum = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local n = #ARGV - 5
local usage = KEYS[3]
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', usage, cid) == 1 then
  return {1}
end
if after ~= '' and redis.call('ZLEXCOUNT', KEYS[2], '-', '[' .. after) ~= through then
  return {2}
end
local as_read, more = chunk_as_read(KEYS[2], after, n)
if not as_read then return {0} end
for i = 1, n do
  -- A turn whose key is gone still has its entry in the list (until drop_missing.lua
  -- drops it): it counts as the bare overhead.
  local key = KEYS[3 + i]
  if redis.call('EXISTS', key) == 0 then
    sum = sum + TURN_OVERHEAD
  else
    sum = sum + turn_key_bytes(key)
  end
end
if more then return {3, through + n, sum} end
local size = conversation_bytes(KEYS[1], sum)
redis.call('HSET', usage, cid, size)
redis.call('HINCRBY', usage, 'total', size)
return {1}
