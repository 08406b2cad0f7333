-- needs: read keys usage
-- KEYS: conv, ints, convs, usage, then the int key of each turn of this batch, then the
-- request_id key of each of those that has one, in the same order.
-- ARGV: caller (read.lua), tag, cid, then per turn of the batch: iid, request_id ('' for
-- none), as the store read them just before, then finish_only: '1' for a run that only
-- finishes a deletion already begun (the resume of store.resume_deletions): a
-- conversation whose hash is still there was never deleted, and is left alone.
-- Every key it touches is declared, so while a reshard moves the slot Redis itself
-- answers ASK or TRYAGAIN instead of the script missing keys still on the other node
-- (store.delete_conversation). Returns 0: not found; 1: deleted; 3: more turns to delete
-- (read again and run again); 2: finish_only, and the conversation is there (untouched).
-- The first run removes the conversation's hash and list entry, so it is gone for every
-- reader and writer at once (a turn written after the store's read is then in the list,
-- and deleted by a later run); the list of turns stays until its last batch, so a retry
-- (a run with the hash gone and the list still there) finishes what a failed call began.
-- One key per UNLINK: mid-reshard, Redis refuses a command of several keys some of which
-- are missing (TRYAGAIN) even inside a script that already wrote, whereas a missing key
-- alone is simply missing.
local function unlink_each(names)
  for _, key in ipairs(names) do redis.call('UNLINK', key) end
end
local conv, ints = KEYS[1], KEYS[2]
local batch = (#ARGV - 4) / 2
local h = redis.call('HMGET', conv, 'user', 'update_time', 'tenant')
if h[1] and ARGV[#ARGV] == '1' then return 2 end
if h[1] then
  if not owns(h[1], h[3], ARGV[1]) then return 0 end
  redis.call('UNLINK', conv)
  redis.call('ZREM', KEYS[3], string.format('%015d', tonumber(h[2])) .. ':' .. ARGV[3])
  forget_usage(ARGV[2], ARGV[3])
elseif redis.call('EXISTS', ints) == 0 then
  return 0
end
local r = 4 + batch
for i = 1, batch do
  local iid, rid = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  if rid ~= '' then r = r + 1 end
  -- Not in the list any more: evicted (its keys went with it) or deleted by another call.
  if redis.call('ZREM', ints, iid) == 1 then
    if rid ~= '' and redis.call('GET', KEYS[r]) == iid then redis.call('DEL', KEYS[r]) end
    unlink_each(interaction_keys(ARGV[2], iid))
  end
end
if redis.call('EXISTS', ints) == 1 then return 3 end
unlink_each(conversation_keys(ARGV[2], ARGV[3]))
return 1
