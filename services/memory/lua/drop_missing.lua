-- needs: read usage
-- Drops from a conversation's list the turns whose key is gone for good (list_interactions,
-- get_conversation or list_conversations found one missing: read.lua's missing_turn; a
-- write at the byte limit: usage.lua's gone_turns): Redis evicted it (a maxmemory-policy
-- other than noeviction), an operator deleted it, or data from before kept it shorter than
-- its conversation. One run walks one chunk of the list (at most the turns the store
-- names, DROP_BATCH), so no run holds Redis for O(turns); the store runs it chunk after
-- chunk, in the list's order (store.MemoryStore._drop_gone). Every turn key it reads is
-- declared, so while a reshard has them split between the slot's two nodes Redis refuses
-- the run (TRYAGAIN: UNAVAILABLE) rather than a turn not moved yet being dropped.
-- Counts: interaction_count is set from the list after every chunk that drops a turn
-- (exact at every step). The conversation's bytes cannot be given back per chunk (a
-- dropped turn's size is not known any more): the walk sums the bytes of the turns that
-- are there, chunk by chunk (the store carries the sum), and its last chunk sets the
-- conversation's bytes to what is measured (as measure.lua counts them), and the owner's
-- total by the difference. Until then they count the dropped turns as before the walk
-- (never less than what is stored; 'drop_pending' in the conversation hash marks that,
-- and makes the next look for gone turns walk again). A write that changed the conversation's bytes between
-- two chunks (its usage field moved) makes the sum stale: the walk starts over ({2}).
-- KEYS: conv, ints, usage, then the key of each turn ARGV names, in its order.
-- ARGV: caller (read.lua), cid, the last id of the chunk before ('' for the first),
-- the conversation's usage field the first chunk saw ('-' for the first chunk itself;
-- '' when it had none), the bytes summed so far, then the chunk's turn ids as the store
-- read them (the ids after the chunk before, in order).
-- Returns {1} done (the last chunk counted, or nothing to do: not the caller's
-- conversation), {0} the chunk's ids are not the list's any more (nothing done: the store
-- reads them again), {2} the conversation's bytes changed since the walk began (nothing
-- done in this chunk: the store starts over), {3, field, sum} go on after this chunk.
if not callers(KEYS[1], ARGV[1]) then return {1} end
local cid, after, seen, sum = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local n = #ARGV - 5
local usage = KEYS[3]
local as_read, more = chunk_as_read(KEYS[2], after, n)
if not as_read then return {0} end
local field = redis.call('HGET', usage, cid) or ''
if seen ~= '-' and field ~= seen then return {2} end
local gone = 0
for i = 1, n do
  local key = KEYS[3 + i]
  if redis.call('EXISTS', key) == 0 then
    redis.call('ZREM', KEYS[2], ARGV[5 + i])
    gone = gone + 1
  else
    sum = sum + turn_key_bytes(key)
  end
end
if gone > 0 then
  redis.call('HSET', KEYS[1], 'interaction_count', redis.call('ZCARD', KEYS[2]))
end
if more then
  -- Turns dropped, their bytes not given back yet: until a walk reaches its last chunk,
  -- every look for gone turns (read.lua's missing_turn) asks for one, so a walk cut short
  -- (ABORTED, UNAVAILABLE) never leaves them counted for good.
  if gone > 0 then redis.call('HSET', KEYS[1], 'drop_pending', '1') end
  return {3, field, sum}
end
redis.call('HDEL', KEYS[1], 'drop_pending')
-- The last chunk. Not measured yet (stored before the accounting): its first write
-- measures it.
if field ~= '' then
  local size = conversation_bytes(KEYS[1], sum)
  redis.call('HSET', usage, cid, size)
  redis.call('HINCRBY', usage, 'total', size - tonumber(field))
end
return {1}
