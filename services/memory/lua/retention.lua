-- Helper (after keys.lua and usage.lua): the sliding time to live. A conversation with
-- ttl_ms > 0 expires at expire_time = last activity + ttl: its own keys get exactly that
-- (PEXPIREAT, O(1) per turn). Its interactions' keys get a later time, renewed_until
-- (expire_time + ttl at the last renewal), and are renewed all together only when
-- expire_time passes it, i.e. at most once per ttl of activity: a turn costs O(1), not
-- O(turns). Nothing reads an interaction without its conversation hash (get_interaction
-- checks it), so a turn is gone when its conversation expires; its key is freed at most
-- one ttl later (two after an update to a shorter ttl).
--
-- Setting every turn's expiry (that renewal, or a ttl change: a longer one, none, or one
-- much shorter) is a walk of RETENTION_BATCH turns per script run, so no run blocks Redis
-- for O(turns): the walk's state is in the conversation hash (walk_after: the last turn
-- id done, '' for none yet, present while a walk is pending; walk_to: the expiry it sets,
-- 0 for none; walk_floor: the earliest expiry a turn not yet walked may have, 0 for
-- none), and each run of renew does at most one batch (retention_step.lua continues it:
-- UpdateConversation runs it until done). Until the walk ends, the conversation's own
-- keys expire no later than walk_floor, so no turn ever expires before its conversation:
-- a ttl made longer or removed takes effect for the conversation once its turns hold it.
-- Conversations stored before these fields have none: no walk pending, their turns at
-- renewed_until.
--
-- A batch touches only turns whose keys its script declared (and the id list, declared
-- too): while a reshard moves the slot, Redis then refuses a run whose keys are split
-- between the nodes (TRYAGAIN, ASK) instead of the run renewing only the turns already
-- on its node and counting the others as done. So renew walks a batch only in scripts
-- that declare it (retention_step.lua: the ids the previous run returned; a new turn's
-- own key in create_interaction.lua); elsewhere it starts the walk and leaves it pending.
local RETENTION_BATCH = 500

-- The earlier of two expiries (ms), 0 meaning never.
local function earlier(a, b)
  if a == 0 then return b end
  if b == 0 then return a end
  return math.min(a, b)
end

-- Sets key's expiry to ms (epoch milliseconds), 0 meaning never.
local function expire_at(key, ms)
  if ms == 0 then
    redis.call('PERSIST', key)
  else
    redis.call('PEXPIREAT', key, ms)
  end
end

-- The turn ids after `after` ('' for none) in the conversation's list, a batch of them.
local function ids_after(conv, after)
  local from = '-'
  if after ~= '' then from = '(' .. after end
  return redis.call('ZRANGEBYLEX', conv .. ':ints', from, '+', 'LIMIT', 0, RETENTION_BATCH)
end

-- One batch of the pending walk (after: the last id done, '' for none): the turns next in
-- the list, up to the first whose keys the script did not declare (`declared`: a set of
-- ids; nil when it did not declare the id list either, which it then does not read).
-- Returns true once done; else false and the ids of the next batch (nil when unread),
-- for the caller to declare in its next run. Nothing is counted done that was not set.
local function walk_step(tag, conv, after, target, declared)
  if not declared then
    -- No turns (the hash's count): nothing to walk, the id list need not be read.
    if tonumber(redis.call('HGET', conv, 'interaction_count') or '0') == 0 then
      redis.call('HDEL', conv, 'walk_after', 'walk_to', 'walk_floor')
      return true
    end
    return false, nil
  end
  local last = after
  for _, iid in ipairs(ids_after(conv, after)) do
    if not declared[iid] then break end
    for _, key in ipairs(interaction_keys(tag, iid)) do expire_at(key, target) end
    last = iid
  end
  -- Done when no turn follows the last one set.
  local next_ids = ids_after(conv, last)
  if #next_ids == 0 then
    redis.call('HDEL', conv, 'walk_after', 'walk_to', 'walk_floor')
    return true
  end
  redis.call('HSET', conv, 'walk_after', last)
  return false, next_ids
end

-- Activity at `now` (ms): the conversation's expiry and its turns'. Returns the expiry
-- (ms) a new key of the conversation's interactions must get, or 0 for none, '1' while a
-- walk of its turns is still pending after this run's batch ('0' once done), and then
-- the ids of the walk's next batch when known. `declared`: walk_step's.
local function renew(tag, cid, now, declared)
  local conv = tag .. ':conv:' .. cid
  local h = redis.call('HMGET', conv, 'ttl_ms', 'renewed_until', 'walk_after', 'walk_to',
                       'walk_floor')
  local ttl = tonumber(h[1] or '0') or 0
  local renewed = tonumber(h[2] or '0') or 0
  local after = h[3]
  local target = tonumber(h[4] or '0') or 0
  local floor = tonumber(h[5] or '0') or 0
  if ttl <= 0 and renewed == 0 and not after then return 0, '0' end
  -- The turns' expiry in force (a pending walk's target is what new turns get).
  local current = renewed
  if after then current = target end
  local expire, want = 0, 0
  if ttl > 0 then
    expire = now + ttl
    want = current
    -- Renewed once per ttl of activity; lowered when a much shorter ttl left the turns
    -- more than two ttl after their conversation (not one: replicas' clocks may differ).
    if current == 0 or expire > current or current > expire + 2 * ttl then
      want = expire + ttl
    end
  end
  if want ~= current then
    -- A new walk (or a new target for a pending one, from its start): the turns not yet
    -- walked keep what they have, at the earliest the floor.
    if after then floor = earlier(floor, target) else floor = renewed end
    after, target = '', want
    -- walk_after '' (none done yet) marks the walk pending even if no batch runs here.
    redis.call('HSET', conv, 'walk_after', '', 'walk_to', string.format('%d', target),
               'walk_floor', string.format('%d', floor))
  end
  local next_ids
  if after then
    local done
    done, next_ids = walk_step(tag, conv, after, target, declared)
    if done then
      after = false
      renewed = target
    end
  end
  local until_ms = expire
  if after then until_ms = earlier(expire, floor) end
  -- A conversation without turns has no list (nor any other key but its hash): its
  -- callers need not declare it (a key declared and missing makes Redis refuse a run
  -- while a reshard moves the slot), so it is not touched. One with turns: declared by
  -- every caller, before anything is written.
  local turns = tonumber(redis.call('HGET', conv, 'interaction_count') or '0') > 0
  for _, key in ipairs(conversation_keys(tag, cid)) do
    if key == conv or turns then expire_at(key, until_ms) end
  end
  if until_ms > 0 then expires_at(tag, until_ms) end
  -- renewed_until: every turn expires at it or later (0: some may never), also for a
  -- replica running the code from before walks (it walks all turns when a conversation
  -- outgrows it).
  local least = renewed
  if after then least = earlier(floor, target) end
  redis.call('HSET', conv, 'expire_time', string.format('%d', until_ms),
             'renewed_until', string.format('%d', least))
  if after then return target, '1', next_ids end
  return renewed, '0'
end
-- The oldest turns beyond max_turns are evicted once the summary covers them (or at once
-- when the conversation has no summary). If no summary covers them for `grace` more
-- turns (the summariser is down or no client writes one), they go anyway and are counted
-- in summary_evicted: storage stays bounded either way. Evicted bytes are given back to
-- the owner's accounting (usage.lua).
--
-- Eviction deletes only turns whose keys (and request_id keys) its script declared
-- (declared_turns, keys.lua): while a reshard moves the slot, Redis then refuses a run
-- whose keys are split between the nodes (TRYAGAIN) instead of the run dropping turns
-- from the list and leaving their keys, still on the old node, behind for good. A script
-- that may evict first asks `undeclared` (nothing written yet): when it names turns, the
-- script returns them and the caller runs it again declaring them (store.py).

-- The turns evict would drop now, oldest first, and how many of them no summary covers.
-- `o` overrides the hash's fields with what the script is about to write: count (turns),
-- max (max_turns), through (summary_through), off (summary_disabled, '1'/'0').
local function evictable(tag, cid, grace, o)
  local conv = tag .. ':conv:' .. cid
  local h = redis.call('HMGET', conv, 'max_turns', 'summary_through', 'summary_disabled',
                       'interaction_count')
  local max = tonumber(o.max or h[1] or '0') or 0
  local count = tonumber(o.count or h[4] or '0') or 0
  if max <= 0 or count <= max then return {}, 0 end
  local through = o.through or h[2] or ''
  local off = (o.off or h[3]) == '1'
  local ids, lost = {}, 0
  for _, iid in ipairs(redis.call('ZRANGE', conv .. ':ints', 0, count - max - 1)) do
    if not (off or (through ~= '' and iid <= through)) then
      if count - #ids <= max + grace then break end
      lost = lost + 1
    end
    ids[#ids + 1] = iid
  end
  return ids, lost
end
-- Of the turns `evictable` names (with overrides `o`), those not declared as they are
-- (`declared`: declared_turns'): the script's answer {7, iid, request_id, ...} for the
-- caller to declare them and run again; nil when the eviction may run. A turn's
-- request_id is read only once its key is declared: an undeclared turn is named with ''
-- (the next run, its key declared, reads its request_id and names it again when it has
-- one, for its request_id key to be declared too).
local function undeclared(tag, cid, grace, o, declared)
  local out = {7}
  for _, iid in ipairs((evictable(tag, cid, grace, o))) do
    local rid = ''
    if declared[iid] ~= nil then
      rid = redis.call('HGET', tag .. ':int:' .. iid, 'request_id') or ''
    end
    if declared[iid] ~= rid then
      out[#out + 1] = iid
      out[#out + 1] = rid
    end
  end
  if #out > 1 then return out end
  return nil
end
-- Deletes the turns `ids` of conversation `cid`, in order, stopping at the first one its
-- script did not declare (`declared`: declared_turns'): their keys and request_id keys,
-- their list entries, their bytes (given back to the owner's accounting) and their count
-- in interaction_count. The one way a turn is removed from a living conversation:
-- eviction (below) and DeleteInteraction (delete_interaction.lua) both go through it.
-- Returns how many, and how many of them no summary covers.
local function drop_turns(tag, cid, ids, declared)
  local conv = tag .. ':conv:' .. cid
  local h = redis.call('HMGET', conv, 'summary_through', 'summary_disabled',
                       'interaction_count')
  local through, off = h[1] or '', h[2] == '1'
  local count = tonumber(h[3] or '0') or 0
  local ints = conv .. ':ints'
  local n, lost, freed = 0, 0, 0
  for _, iid in ipairs(ids) do
    local rid = declared[iid]
    if rid == nil then break end
    if not (off or (through ~= '' and iid <= through)) then lost = lost + 1 end
    freed = freed + turn_bytes(tag, iid)
    forget_interaction(tag, iid, rid)
    redis.call('ZREM', ints, iid)
    n = n + 1
  end
  if n > 0 then
    redis.call('HSET', conv, 'interaction_count', count - n)
    count_bytes(tag, cid, -freed)
  end
  return n, lost
end
-- Evicts what `evictable` names, only declared turns (checked by `undeclared` before the
-- script wrote anything, so none is skipped); returns how many. Those no summary covers
-- are counted in summary_evicted.
local function evict(tag, cid, grace, declared)
  local ids = evictable(tag, cid, grace, {})
  if #ids == 0 then return 0 end
  local n, lost = drop_turns(tag, cid, ids, declared)
  if lost > 0 then
    local conv = tag .. ':conv:' .. cid
    local before = redis.call('HGET', conv, 'summary_evicted')
    redis.call('HSET', conv, 'summary_evicted', (tonumber(before or '0') or 0) + lost)
  end
  return n
end
-- Whether a conversation holding `count` turns may take one more under the service's cap
-- on turns per conversation (`cap`): below it, or when the eviction after the new turn
-- (`evict` above, with the same `grace`) drops at least one, so the count does not grow.
-- O(1): only the oldest turn decides whether evict drops one.
local function room_for_turn(tag, cid, count, cap, grace)
  if count < cap then return true end
  local conv = tag .. ':conv:' .. cid
  local h = redis.call('HMGET', conv, 'max_turns', 'summary_through', 'summary_disabled')
  local max = tonumber(h[1] or '0') or 0
  if max <= 0 or count + 1 <= max then return false end
  if h[3] == '1' or count + 1 > max + grace then return true end
  local through = h[2] or ''
  -- At the cap the conversation has turns, so a list: declared first (a caller that
  -- declares it only when read, check_storage.lua, runs again with it).
  declare_first({conv .. ':ints'})
  local oldest = redis.call('ZRANGE', conv .. ':ints', 0, 0)[1]
  return through ~= '' and oldest ~= nil and oldest <= through
end

-- The deletions of turns the summary did not cover (delete_interaction.lua) that a fold
-- may have read: the count unfolded_deletions, and the ids of the last
-- UNFOLDED_DELETED_KEPT of them (unfolded_deleted, space-separated, oldest first), so a
-- fold is refused only when a turn it folded was deleted, not for a newer one it left out
-- (update_summary.lua): the newest turns were deleted during folds for ever otherwise.
-- The ids' bytes (at most about 300: 8 ids of 36, never cleared) are charged to the
-- conversation (`tag`, `cid`) as its name and summary are (usage.lua's conversation_bytes).
local UNFOLDED_DELETED_KEPT = 8
local function note_unfolded_deletion(tag, cid, conv, iid)
  redis.call('HINCRBY', conv, 'unfolded_deletions', 1)
  local kept = redis.call('HGET', conv, 'unfolded_deleted') or ''
  local ids = {}
  for id in string.gmatch(kept, '%S+') do
    ids[#ids + 1] = id
  end
  ids[#ids + 1] = iid
  local first = math.max(1, #ids - UNFOLDED_DELETED_KEPT + 1)
  local now = table.concat(ids, ' ', first, #ids)
  redis.call('HSET', conv, 'unfolded_deleted', now)
  count_bytes(tag, cid, #now - #kept)
end
-- Whether the last ``since`` deletions noted (note_unfolded_deletion) all deleted turns
-- newer than ``through``: none of them was in a fold up to ``through``. False when they
-- are not all kept (more than UNFOLDED_DELETED_KEPT, or noted before the ids were).
local function deleted_only_after(conv, since, through)
  if since < 1 or since > UNFOLDED_DELETED_KEPT then return false end
  local ids = {}
  for id in string.gmatch(redis.call('HGET', conv, 'unfolded_deleted') or '', '%S+') do
    ids[#ids + 1] = id
  end
  if #ids < since then return false end
  for i = #ids - since + 1, #ids do
    if ids[i] <= through then return false end
  end
  return true
end
