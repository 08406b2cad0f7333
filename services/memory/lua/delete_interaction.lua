-- needs: read keys usage retention
-- KEYS: int, then the turn's conversation hash, its list of turns and the owner's usage
-- (the store names them from what a run before asked for: read.lua's declare_first; not
-- up front: a turn already deleted is then read alone, so mid-reshard it answers missing
-- where a run declaring it with a key that exists is refused for the move), then the keys
-- of the turn declared for deletion (declared_turns, keys.lua: its interaction key and
-- its request_id keys). ARGV: caller (read.lua), tag, iid, then the turn declared for
-- deletion (declared_turns: iid, request_id, their number).
-- Deletes one of the caller's turns as eviction deletes a turn (retention.lua's
-- drop_turns): its keys, its request_id key, its list entry, its count, its bytes. The
-- conversation's summary, update_time and summary_evicted are left as they are; a turn
-- the summary does not cover yet bumps unfolded_deletions (and is kept among the last
-- ones deleted: retention.lua's note_unfolded_deletion), so a fold under way that read it
-- (and may hold its words) is refused (update_summary.lua).
-- Returns {0} missing or not the caller's (nothing written), {1, cid} deleted, {7, iid,
-- request_id} the turn's keys to declare and run again with (nothing written: its
-- request_id is read only from its key, so the request_id keys are declared by a second
-- run, as eviction's are).
local row = interaction(KEYS[1])
if not row[1] then return {0} end
local conv = ARGV[2] .. ':conv:' .. row[1]
declare_first({conv, conv .. ':ints', usage_key(ARGV[2])})
if not callers(conv, ARGV[1]) then return {0} end
local declared = declared_turns()
local rid = redis.call('HGET', KEYS[1], 'request_id') or ''
if declared[ARGV[3]] ~= rid then return {7, ARGV[3], rid} end
if redis.call('ZSCORE', conv .. ':ints', ARGV[3]) == false then
  -- Listed nowhere: a leftover of a turn its conversation no longer has (another call
  -- deleted it between the reads): gone, as for every reader.
  return {0}
end
drop_turns(ARGV[2], row[1], {ARGV[3]}, declared)
if ARGV[3] > (redis.call('HGET', conv, 'summary_through') or '') then
  note_unfolded_deletion(ARGV[2], row[1], conv, ARGV[3])
end
return {1, row[1]}
