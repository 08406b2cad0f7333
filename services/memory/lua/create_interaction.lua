-- needs: read touch keys usage retention new_conversation
-- KEYS: conv, ints, int, convs, req, claim (CheckStorage's reservation of request_id),
-- usage, claimfp (the reservation's fingerprint, claim_request.lua), then the keys of the
-- turns declared for eviction (declared_turns, keys.lua).
-- ARGV: caller (read.lua), tag, cid, iid, now_ms, request_id, ttl_ms, serialized
-- interaction, serialized traces ('' when none: a field of the interaction's hash, so they
-- share its slot, its expiry and its deletion),
-- eviction grace (turns), max bytes (of the owner), max turns per conversation,
-- the request's fingerprint (kept with the turn beside its request_id; '' for none),
-- then '1' when the turn starts conversation cid (CreateInteraction's new_conversation:
-- made here with the turn, in the same atomic step, so it never exists without it) and
-- that conversation's name, create_ms, ttl_ms, max_turns, summary_disabled ('1'/'0'),
-- and the max conversations (of the owner); '0' and nothing more otherwise; then the
-- window of the check for gone turns at the limit (usage.lua's gone_check_before_declared:
-- its offset, its turns); then the turns declared for eviction (declared_turns: iid,
-- request_id per turn, their number).
-- Returns {0} not found, {1, walk} created (walk: '1' while a walk of the turns' expiry
-- is pending, retention.lua: the caller runs retention_step.lua until done), {2, cid, data,
-- fingerprint} already created by this request_id (the fingerprint it was stored with,
-- false for none: the caller compares),
-- {3} the turn (with its new conversation) does not fit the owner's bytes, {4} the
-- conversation holds the most turns allowed, {5} the owner has the most conversations
-- allowed (nothing written for any of them), {6, newest} iid is not newer than the
-- conversation's newest turn (the writer's clock is behind the one that wrote it: the
-- caller makes an id after `newest` and writes again; nothing written), {7, iid,
-- request_id, ...} turns to declare and run again with (nothing written): those the
-- eviction after this turn deletes (retention.lua), or the turn request_id names (its
-- key is read only declared: mid-reshard it may not have moved yet, and declared, Redis
-- refuses the run until it has, rather than the turn being written twice).
gone_check_before_declared()
local create = ARGV[14] == '1'
local declared = declared_turns()
local h
if create then
  h = {ARGV[16], '0'}
else
  if not callers(KEYS[1], ARGV[1]) then return {0} end
  h = redis.call('HMGET', KEYS[1], 'update_time', 'interaction_count')
end
if ARGV[6] ~= '' then
  local prev = redis.call('GET', KEYS[5])
  if prev then
    -- A turn is gone when its conversation hash is (expired: its own key may live one
    -- ttl longer): then the key is free, as stored_request.lua (CheckStorage) says too.
    -- Its key is read only declared (a first run names it, nothing written), as is
    -- its conversation's hash (owned, read.lua: declare_first), so that mid-reshard a
    -- turn not moved yet is never taken for gone and the turn written twice.
    local key = ARGV[2] .. ':int:' .. prev
    if declared[prev] == nil then return {7, prev, ARGV[6]} end
    local found = interaction(key)
    if found[1] and owned(ARGV[2], ARGV[1], found[1], {}) then
      return {2, found[1], found[2], redis.call('HGET', key, 'request_fingerprint')}
    end
  end
end
if not create then
  -- Turns are ordered by id (lists, history, the summary's through, eviction): a turn
  -- is the newest, whatever the clock of the replica that made its id.
  local newest = redis.call('ZRANGE', KEYS[2], -1, -1)[1]
  if newest and ARGV[4] <= newest then return {6, newest} end
end
local size = #ARGV[8] + #ARGV[9] + TURN_OVERHEAD
if create then
  -- Every check before anything is written: the conversation and its turn, or neither.
  -- (It holds no turn yet: the cap on turns, at least 1, cannot refuse this one.)
  if not conversation_room(ARGV[2], KEYS[4], tonumber(ARGV[20])) then return {5} end
  if not room_new(ARGV[2], conversation_size(ARGV[15]) + size, tonumber(ARGV[11])) then
    return {3}
  end
  make_conversation(ARGV[2], ARGV[3], KEYS[1], KEYS[4], ARGV[1], ARGV[15], ARGV[16],
                    ARGV[17], ARGV[18], ARGV[19])
elseif not room_for_turn(ARGV[2], ARGV[3], tonumber(h[2]), tonumber(ARGV[12]),
                         tonumber(ARGV[10])) then
  -- Checked before anything is written. Eviction (below) gives back what it drops, but
  -- only once the turn is in: a conversation at max_turns needs room for one turn more.
  return {4}
else
  local ask = undeclared(ARGV[2], ARGV[3], tonumber(ARGV[10]),
                         {count = tonumber(h[2]) + 1}, declared)
  if ask then return ask end
end
if not charge(ARGV[2], ARGV[3], size, tonumber(ARGV[11])) then return {3} end
redis.call('HSET', KEYS[3], 'conversation_id', ARGV[3], 'data', ARGV[8])
if ARGV[9] ~= '' then redis.call('HSET', KEYS[3], 'traces', ARGV[9]) end
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[3], 'request_id', ARGV[6])
  -- Beside the turn's data, never in it: a retry's request is compared with it, and no
  -- reader of the turn sees it.
  if ARGV[13] ~= '' then redis.call('HSET', KEYS[3], 'request_fingerprint', ARGV[13]) end
  redis.call('SET', KEYS[5], ARGV[4], 'PX', ARGV[7])
  -- Stored: an attempt that reserved request_id is done (the others now find the turn).
  redis.call('DEL', KEYS[6], KEYS[8])
end
redis.call('ZADD', KEYS[2], 0, ARGV[4])
touch(KEYS[1], KEYS[4], ARGV[3], ARGV[5], h[1], 'interaction_count', tonumber(h[2]) + 1)
evict(ARGV[2], ARGV[3], tonumber(ARGV[10]), declared)
-- Its own key is declared: a walk that reaches only this turn (its conversation's first)
-- ends here; any other walk is left to retention_step.lua (retention.lua).
local renewed, walking = renew(ARGV[2], ARGV[3], tonumber(ARGV[5]), {[ARGV[4]] = true})
if renewed > 0 then
  for _, key in ipairs(interaction_keys(ARGV[2], ARGV[4])) do
    redis.call('PEXPIREAT', key, renewed)
  end
end
return {1, walking}
