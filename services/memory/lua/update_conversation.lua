-- needs: read touch keys usage retention
-- KEYS: conv, convs, usage, then ints unless the store expects no turns (a conversation
-- without turns has no list, and a key declared and missing makes Redis refuse the run
-- for as long as a reshard moves the slot: TRYAGAIN; a run that needs it asks for it,
-- nothing written), then the keys of the turns declared for eviction (declared_turns,
-- keys.lua). ARGV: caller (read.lua), tag, cid, now_ms, eviction grace,
-- max bytes (of the owner), then for name, ttl_ms, max_turns, summary_disabled a pair
-- each: '1' and the value to set it, '0' and '' not to; then the window of the check for
-- gone turns at the limit (usage.lua's gone_check_before_declared: its offset, its turns);
-- then the turns declared (iid, request_id per turn, their number).
-- Returns the updated hash (store.CONVERSATION_FIELDS) and '1' when a walk of its turns is
-- pending ('0' if not), nil when not found, or -1 when a longer name does not fit the
-- owner's bytes (nothing written), or {7, iid, request_id, ...}: the turns the eviction
-- (a lower max_turns, summaries disabled) deletes, to declare and run again with
-- (nothing written; retention.lua). Counts as activity (renews the ttl).
gone_check_before_declared()
local h = redis.call('HMGET', KEYS[1], 'user', 'update_time', 'tenant',
                     'interaction_count')
if not owns(h[1], h[3], ARGV[1]) then return false end
local tag, cid, now = ARGV[2], ARGV[3], tonumber(ARGV[4])
-- Its list is read (eviction) and its expiry set (renew) only when it has turns: then
-- declared, before anything is written.
if tonumber(h[4] or '0') > 0 then declare_first({KEYS[1] .. ':ints'}) end
local declared = declared_turns()
local after = {}
if ARGV[11] == '1' then after.max = ARGV[12] end
if ARGV[13] == '1' then after.off = ARGV[14] end
local ask = undeclared(tag, cid, tonumber(ARGV[5]), after, declared)
if ask then return ask end
-- Always charged (0 bytes without a new name): a conversation stored before the
-- accounting is measured here, so the eviction below can give its bytes back.
local grow = 0
if ARGV[7] == '1' then grow = #ARGV[8] - redis.call('HSTRLEN', KEYS[1], 'name') end
if not charge(tag, cid, grow, tonumber(ARGV[6])) then return -1 end
if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'name', ARGV[8]) end
if ARGV[11] == '1' then redis.call('HSET', KEYS[1], 'max_turns', ARGV[12]) end
if ARGV[13] == '1' then redis.call('HSET', KEYS[1], 'summary_disabled', ARGV[14]) end
-- A new ttl (longer, shorter or none): renew below starts the walk that sets every
-- turn's expiry, one batch per run (retention.lua); the caller runs retention_step.lua
-- until it is done.
if ARGV[9] == '1' then redis.call('HSET', KEYS[1], 'ttl_ms', ARGV[10]) end
touch(KEYS[1], KEYS[2], cid, ARGV[4], h[2])
evict(tag, cid, tonumber(ARGV[5]), declared)
local _, walking = renew(tag, cid, now)
local row = conversation(KEYS[1])
table.insert(row, walking)
return row
