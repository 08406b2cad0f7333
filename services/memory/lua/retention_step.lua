-- needs: read keys usage retention
-- The next batch of a conversation's pending walk of its turns (retention.lua), renewing
-- from its last activity (update_time): not activity itself.
-- KEYS: conv, ints, usage, then the int key of each turn of this batch. ARGV: caller
-- (read.lua), tag, cid, then the batch's turn ids (the previous run's answer; none in the
-- first run).
-- Every key the batch touches is declared, so while a reshard moves the slot Redis itself
-- answers ASK or TRYAGAIN instead of the run renewing only what its node holds
-- (store._finish_walk). A batch that no longer comes next (another run went on, a turn
-- was evicted) is walked up to its first turn not declared.
-- Returns the conversation (store.CONVERSATION_FIELDS) and '1' while a walk is still
-- pending ('0' once done), then the ids of the next batch; nil when not found.
if not callers(KEYS[1], ARGV[1]) then return false end
local declared = {}
for i = 4, #ARGV do declared[ARGV[i]] = true end
local update_time = tonumber(redis.call('HGET', KEYS[1], 'update_time'))
local _, walking, next_ids = renew(ARGV[2], ARGV[3], update_time, declared)
local row = conversation(KEYS[1])
table.insert(row, walking)
for _, iid in ipairs(next_ids or {}) do table.insert(row, iid) end
return row
