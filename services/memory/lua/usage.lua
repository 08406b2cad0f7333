-- Helper: the owner's storage accounting (docs/memory.md#storage-limits). One hash,
-- tag:usage, holds 'total' (the owner's stored bytes) and one field per conversation
-- (cid -> its bytes), beside tag:convs and in the same slot, so the script that writes
-- also checks and counts, atomically: two writes at the limit cannot both pass.
-- A conversation counts a fixed overhead plus its name, summary and the ids of its last
-- deleted unfolded turns (retention.lua's note_unfolded_deletion); a turn its serialized
-- data and traces plus a fixed overhead (the hash, the id list entry, the request id and
-- its fingerprint: the overhead keeps a flood of tiny turns from filling Redis
-- uncounted).
-- Expiry (retention) deletes a conversation's keys without a script, so its field stays
-- until a reconcile (reconcile.lua) finds its hash gone: done whenever a write would not
-- fit, before it is refused, so an expired conversation never keeps an owner full. The
-- walk costs O(conversations) (~20 ms for 10,000), so it is made only once a conversation
-- may have expired: 'next_expiry' (ms, Redis's clock, the one expiry uses) is the
-- earliest expiry the last walk saw, lowered by renew (retention.lua) whenever it sets an
-- earlier one; absent (data from before, or never walked): walk. A full owner whose
-- conversations do not expire is refused in O(1), however often it tries.
-- The walk and the measure of a conversation stored before the accounting read keys a
-- write script does not declare (every conversation hash, every turn): mid-reshard, one
-- not moved yet would read as missing on the slot's new node (a live conversation
-- dropped from the list, a turn counted as bare overhead). So a write script never makes
-- them itself: it stops, nothing written, with an error reply naming what it needs
-- (USAGE_FIRST below), and the store runs reconcile.lua or measure.lua with every key
-- they read declared, then the write again (store.MemoryStore._run).
local TURN_OVERHEAD = 256
local CONVERSATION_OVERHEAD = 256
local NEVER = 99999999999999  -- ms: year 5138

local function usage_key(tag)
  return tag .. ':usage'
end
-- A turn's bytes, read from its hash `key`.
local function turn_key_bytes(key)
  return redis.call('HSTRLEN', key, 'data') + redis.call('HSTRLEN', key, 'traces')
         + TURN_OVERHEAD
end
local function turn_bytes(tag, iid)
  return turn_key_bytes(tag .. ':int:' .. iid)
end
-- Adds n (may be negative) to a conversation that has a field, and to the total.
local function count_bytes(tag, cid, n)
  local usage = usage_key(tag)
  if n == 0 or redis.call('HEXISTS', usage, cid) == 0 then return end
  redis.call('HINCRBY', usage, cid, n)
  redis.call('HINCRBY', usage, 'total', n)
end
-- Drops a conversation's field (deleted or expired), giving its bytes back; called once
-- its member has left the owner's list. With the owner's last conversation gone the
-- whole hash goes (an empty list is no key either): nothing of the owner stays in Redis.
-- A conversation's bytes (key `conv`: its hash) with its turns summing `turns`.
local function conversation_bytes(conv, turns)
  return CONVERSATION_OVERHEAD + redis.call('HSTRLEN', conv, 'name')
         + redis.call('HSTRLEN', conv, 'summary')
         + redis.call('HSTRLEN', conv, 'unfolded_deleted') + turns
end
local function forget_usage(tag, cid)
  local usage = usage_key(tag)
  if redis.call('EXISTS', tag .. ':convs') == 0 then
    redis.call('DEL', usage)
    return
  end
  local n = redis.call('HGET', usage, cid)
  if n then
    redis.call('HDEL', usage, cid)
    redis.call('HINCRBY', usage, 'total', -tonumber(n))
  end
end
-- The error reply a write script stops with (nothing written) when the store must first
-- run reconcile.lua ('reconcile'), measure.lua ('measure <cid>') or drop_missing.lua
-- ('drop <cid>', with the caller the script's first ARGV, as every script that charges
-- bytes takes it); store.py matches it.
local USAGE_FIRST = 'GENSEARCH_USAGE_FIRST '
-- Whether a walk of the owner's conversations is due (one may have expired since the
-- last): then the caller stops and the store runs reconcile.lua, all the hashes declared.
local function reconcile(tag)
  -- No list: no conversation to drop (or, on a slot's new node mid-reshard, a list not
  -- moved yet: declared, Redis refuses the run while it is split).
  -- The list is read: declared (every caller passes it; else one more run with it).
  local convs = tag .. ':convs'
  declare_first({convs})
  if redis.call('EXISTS', convs) == 0 then return end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now < tonumber(redis.call('HGET', usage_key(tag), 'next_expiry') or '0') then return end
  error({err = USAGE_FIRST .. 'reconcile'})
end
-- A conversation now expires at `expire` (ms): the next walk must not wait longer.
local function expires_at(tag, expire)
  local usage = usage_key(tag)
  local known = redis.call('HGET', usage, 'next_expiry')
  if known and expire < tonumber(known) then
    redis.call('HSET', usage, 'next_expiry', string.format('%d', expire))
  end
end
-- Whether n more bytes fit under the limit (reconciling first when they seem not to).
local function room(tag, n, limit)
  if n <= 0 then return true end
  local usage = usage_key(tag)
  if tonumber(redis.call('HGET', usage, 'total') or '0') + n <= limit then return true end
  reconcile(tag)
  return tonumber(redis.call('HGET', usage, 'total') or '0') + n <= limit
end
-- Counts conversation `cid` (which exists) if it is not yet: a conversation stored
-- before this accounting has no field; it is measured (O(its turns), once: measure.lua,
-- its turns declared, run by the store when this stops the script) and counted from its
-- first write (or check) on.
local function measure(tag, cid)
  if redis.call('HEXISTS', usage_key(tag), cid) == 0 then
    error({err = USAGE_FIRST .. 'measure ' .. cid})
  end
end
-- A chunked walk's run (drop_missing.lua, measure.lua; store.MemoryStore._walk_in_chunks):
-- whether the list still holds, after `after`, the chunk of n turn ids the store read
-- (ARGV[6..5 + n]), and if so whether turns follow it. A false first: the list changed
-- since the read, nothing may be done (the store reads the chunk again).
local function chunk_as_read(list, after, n)
  local start = after == '' and '-' or '(' .. after
  -- One more than the chunk: whether turns follow it.
  local ids = redis.call('ZRANGE', list, start, '+', 'BYLEX', 'LIMIT', 0, n + 1)
  if #ids < n then return false, false end
  for i = 1, n do
    if ids[i] ~= ARGV[5 + i] then return false, false end
  end
  return true, #ids > n
end
-- The window of gone_turns (read.lua's missing_turn): where it starts and how many turns it
-- checks, two ARGV the store sends (store.MemoryStore._gone_check) to every script that
-- charges bytes; the script names their position (gone_check_at) before it charges.
-- The second may be followed (space-separated) by the names of the keys the store found
-- missing when a run asked for them with declare_present (read.lua): gone_elsewhere
-- skips those conversations.
local gone_window = {0, 0}
local gone_missing = {}
local function gone_check_at(at)
  local words = {}
  for word in string.gmatch(ARGV[at + 1], '%S+') do words[#words + 1] = word end
  gone_window = {tonumber(ARGV[at]), tonumber(words[1])}
  for i = 2, #words do gone_missing[words[i]] = true end
end
-- As gone_check_at, for a script whose ARGV ends with the turns declared for eviction
-- (keys.lua's declared_turns): the two come just before them.
local function gone_check_before_declared()
  gone_check_at(#ARGV - 2 * tonumber(ARGV[#ARGV]) - 2)
end
-- A write to conversation `cid` (which exists, the caller's) that does not fit: when a
-- turn of its window (read.lua's missing_turn, strict: the list and every turn key of the
-- window declared, the script run again with them when they are not) has no key here (gone for good, or
-- mid-reshard not moved yet), its bytes may be counted still. Only a run declaring every
-- turn may drop it (drop_missing.lua), so the script stops, nothing written, for the
-- store to run that and then the write again ('drop <cid>'). Only at the limit, and
-- O(the window) however long the conversation: a client retrying against a full owner
-- pays no more per retry, and its retries (each with its own window) cover every turn.
local function gone_turns(tag, cid)
  local _, missing = missing_turn(tag, tag .. ':conv:' .. cid .. ':ints', gone_window[1],
                                  gone_window[2])
  if missing then error({err = USAGE_FIRST .. 'drop ' .. cid}) end
end
-- Conversations other than the written one a write at the byte limit looks into for
-- gone turns (gone_elsewhere), at most.
local OTHER_CONVERSATIONS = 16
-- A write that does not fit (after gone_turns found none in its own conversation `cid`,
-- '' for a new one): gone turns of the caller's other conversations count still (until
-- something reads them), so before refusing it looks, bounded like gone_turns, at up to
-- OTHER_CONVERSATIONS of the owner's conversations (from the window's offset in the
-- owner's list, wrapping) and, across those with turns, at most the window's number of
-- turns (each its share, from the same offset). Every key it reads is declared: the
-- conversations' hashes, then the lists of those with turns, then their turns, each asked
-- for by a run that stops before reading them (declare_first: three more runs, only at
-- the limit); a conversation without turns has no list, so none is declared for it, and
-- a hash the store finds missing is skipped (declare_present, read.lua): a key declared
-- and missing makes Redis refuse the run mid-reshard (TRYAGAIN). A turn found missing
-- stops the script for drop_missing.lua on that conversation ('drop <cid>'), then the
-- write runs again. The other legacy owner's conversations of a shared tag are skipped
-- (its own reads drop its turns).
local function gone_elsewhere(tag, cid)
  if gone_window[2] <= 0 then return end  -- a script without the window (no look)
  local convs = tag .. ':convs'
  declare_first({convs})
  local members = turn_window(convs, gone_window[1], OTHER_CONVERSATIONS + 1)
  local others, names = {}, {}
  for _, member in ipairs(members) do
    local other = string.sub(member, 17)
    local conv = tag .. ':conv:' .. other
    if other ~= cid and not gone_missing[conv] and #others < OTHER_CONVERSATIONS then
      others[#others + 1] = other
      names[#names + 1] = conv
    end
  end
  if #others == 0 then return end
  -- A member's hash may be missing (evicted, deleted by hand: no reconcile is due, else
  -- room() would have stopped for it), so only those the store finds are declared, the
  -- others skipped: a hash missing gives no turn back here either way.
  declare_present(names)
  -- Then the lists of those with turns (the caller's): a conversation without turns has
  -- no list, and a key declared and missing makes Redis refuse the run while a reshard
  -- moves the slot (TRYAGAIN: the write would answer UNAVAILABLE for as long as the move
  -- lasts, not the refusal it is), as list_conversations.lua declares them.
  local looked, lists = {}, {}
  for _, other in ipairs(others) do
    local conv = tag .. ':conv:' .. other
    if callers(conv, ARGV[1]) then
      if redis.call('HEXISTS', conv, 'drop_pending') == 1 then
        error({err = USAGE_FIRST .. 'drop ' .. other})
      end
      if tonumber(redis.call('HGET', conv, 'interaction_count') or '0') > 0 then
        looked[#looked + 1] = other
        lists[#lists + 1] = conv .. ':ints'
      end
    end
  end
  if #looked == 0 then return end
  declare_first(lists)
  local share = math.max(1, math.floor(gone_window[2] / #looked))
  local turns, of = {}, {}
  for i, other in ipairs(looked) do
    for _, iid in ipairs(turn_window(lists[i], gone_window[1], share)) do
      turns[#turns + 1] = tag .. ':int:' .. iid
      of[#turns] = other
    end
  end
  declare_first(turns)
  for i, key in ipairs(turns) do
    if redis.call('EXISTS', key) == 0 then error({err = USAGE_FIRST .. 'drop ' .. of[i]}) end
  end
end
-- Whether n more bytes for a new conversation fit (room, then gone_elsewhere when not).
local function room_new(tag, n, limit)
  if room(tag, n, limit) then return true end
  gone_elsewhere(tag, '')
  return false
end
-- Whether n more bytes for conversation `cid` fit (room, then gone_turns and
-- gone_elsewhere when not).
local function room_in(tag, cid, n, limit)
  if room(tag, n, limit) then return true end
  gone_turns(tag, cid)
  gone_elsewhere(tag, cid)
  return false
end
-- A write that changes conversation `cid` (which exists) by n bytes: false, and nothing
-- counted, when it does not fit.
local function charge(tag, cid, n, limit)
  measure(tag, cid)
  if not room_in(tag, cid, n, limit) then return false end
  count_bytes(tag, cid, n)
  return true
end
