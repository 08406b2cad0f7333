-- needs: read keys usage retention
-- KEYS: conv, usage, convs (read when the summary does not fit: usage.lua), then ints
-- unless the store expects no turns (a conversation without turns has no list, and a
-- key declared and missing makes Redis refuse the run for as long as a reshard moves the
-- slot: TRYAGAIN; a run that needs it asks for it, nothing written), then the keys of
-- the turns declared for eviction (declared_turns, keys.lua). ARGV: caller (read.lua), tag, cid, now_ms, expected through,
-- new through, text, turns folded, prompt tokens, completion tokens, eviction grace, max
-- bytes (of the owner), expected unfolded_deletions ('' not to check: a conflict when
-- a turn up to the new through was deleted since, whose words the fold may hold), then the window of the check for gone turns at the limit
-- (usage.lua's gone_check_before_declared: its offset, its turns), then the turns declared
-- (iid, request_id per turn, their number).
-- Compare-and-set: the summary changes only if it still covers the turns up to the
-- expected interaction. Returns {0} not found, {1, current through} conflict,
-- {2} new through is not a newer interaction of the conversation, {3} summary disabled,
-- {4, row} done, {5} a longer summary does not fit the owner's bytes (nothing written),
-- {7, iid, request_id, ...} the turns the eviction deletes, to declare and run again with
-- (nothing written; retention.lua).
-- Evicts the turns beyond max_turns the new summary covers.
gone_check_before_declared()
local h = redis.call('HMGET', KEYS[1], 'user', 'summary_through', 'summary_disabled',
                     'tenant', 'interaction_count', 'unfolded_deletions')
if not owns(h[1], h[4], ARGV[1]) then return {0} end
local current = h[2] or ''
if current ~= ARGV[5] then return {1, current} end
-- Turns deleted since the fold read the count: refused unless each was newer than what
-- it folds (a turn it left out: its words are not in this summary).
local since = ARGV[13] ~= '' and tonumber(h[6] or '0') - tonumber(ARGV[13]) or 0
if since ~= 0 and not deleted_only_after(KEYS[1], since, ARGV[6]) then
  return {1, current}
end
if h[3] == '1' then return {3} end
-- Without turns, no list: no interaction for the summary to cover.
if ARGV[6] <= current or tonumber(h[5] or '0') == 0 then return {2} end
local ints = KEYS[1] .. ':ints'
declare_first({ints})
if not redis.call('ZSCORE', ints, ARGV[6]) then return {2} end
local ask = undeclared(ARGV[2], ARGV[3], tonumber(ARGV[11]), {through = ARGV[6]},
                       declared_turns())
if ask then return ask end
local grow = #ARGV[7] - redis.call('HSTRLEN', KEYS[1], 'summary')
if not charge(ARGV[2], ARGV[3], grow, tonumber(ARGV[12])) then return {5} end
redis.call('HSET', KEYS[1], 'summary', ARGV[7], 'summary_through', ARGV[6],
           'summary_update_time', ARGV[4])
-- Totals stop at int64's maximum: HINCRBY past it is an error (and a script stops at an
-- error with what it wrote so far kept), so an overflowing add sets the maximum instead.
local function add(field, n)
  local done = redis.pcall('HINCRBY', KEYS[1], field, n)
  if type(done) == 'table' and done.err then
    redis.call('HSET', KEYS[1], field, '9223372036854775807')
  end
end
add('summary_turns', ARGV[8])
add('summary_prompt_tokens', ARGV[9])
add('summary_completion_tokens', ARGV[10])
add('summary_folds', 1)
evict(ARGV[2], ARGV[3], tonumber(ARGV[11]), declared_turns())
return {4, conversation(KEYS[1])}
