-- Helper: rows in a fixed field order, cheaper to build and to parse than HGETALL's pairs.
-- The conversation fields are store.CONVERSATION_FIELDS, in that order.
local function interaction(key)
  return redis.call('HMGET', key, 'conversation_id', 'data')
end
local function conversation(key)
  return redis.call('HMGET', key, 'user', 'name', 'create_time', 'update_time',
                    'interaction_count', 'expire_time', 'ttl_ms', 'max_turns',
                    'summary_disabled', 'summary', 'summary_through', 'summary_turns',
                    'summary_prompt_tokens', 'summary_completion_tokens', 'summary_folds',
                    'summary_update_time', 'summary_evicted', 'tenant',
                    'unfolded_deletions')
end
-- The caller, as the store sends it (store.MemoryStore.caller): "<user>\0<tenant>\0<flag>",
-- the flag '1' when the conversations recorded without a tenant are the caller's (no user
-- or tenant name holds a NUL). Returns user, tenant and whether the flag is set.
local function caller(who)
  local a = string.find(who, '\0', 1, true)
  local b = string.find(who, '\0', a + 1, true)
  local untenanted = string.sub(who, b + 1) == '1'
  return string.sub(who, 1, a - 1), string.sub(who, a + 1, b - 1), untenanted
end
-- Whether a conversation whose hash holds `user` and `tenant` (false when absent) is the
-- caller's: the same user and the same tenant. Two owners share one key tag (store.py,
-- Owner.digest), so the tag alone does not decide. A conversation stored before its tenant
-- was recorded is the caller's only when the flag says so (docs/memory.md#legacy-owners).
local function owns(user, tenant, who)
  local u, t, untenanted = caller(who)
  if user ~= u then return false end
  if tenant then return tenant == t end
  return untenanted
end
-- Whether the conversation hash `conv` exists and is the caller's.
local function callers(conv, who)
  local h = redis.call('HMGET', conv, 'user', 'tenant')
  return owns(h[1], h[2], who)
end
-- Every key a script touches is declared in its KEYS: Redis Cluster routes, locks and
-- migrates a script by them, and script-routing proxies route by them (neither Redis nor
-- Valkey refuses an undeclared key of the slot, so nothing else would tell). A key a
-- script derives (a turn's conversation hash, from the turn; the turn a request_id names;
-- a page's turns and conversations; a window of turns) and its run did not declare is
-- not read: the run stops, before writing anything, with an error reply naming it, and
-- the store runs the script again with it declared (store.MemoryStore._run; the store
-- declares up front what it knows, so most calls take one run). Declared, a key found
-- missing mid-reshard on the slot's new node makes Redis refuse the run (TRYAGAIN, the
-- call UNAVAILABLE) rather than a key not moved yet being taken for gone.
local DECLARE_FIRST = 'GENSEARCH_DECLARE_FIRST'
-- KEYS as a set, built once per run (a run at the byte limit may ask about hundreds of
-- turns: one pass over KEYS, not one per name).
local declared_set = nil
local function declared(name)
  if not declared_set then
    declared_set = {}
    for _, key in ipairs(KEYS) do declared_set[key] = true end
  end
  return declared_set[name] == true
end
local function declare_first(names)
  local wanted = {}
  for _, name in ipairs(names) do
    if not declared(name) then wanted[#wanted + 1] = name end
  end
  if #wanted > 0 then error({err = DECLARE_FIRST .. ' ' .. table.concat(wanted, ' ')}) end
end
-- As declare_first, for keys that may not exist (another conversation's hash, named by the
-- owner's list: evicted, or deleted by hand). Redis cannot tell a key not moved yet from
-- one that does not exist, so mid-reshard it refuses a run declaring a missing key for as
-- long as the move lasts. So these are named with a '?': the store reads each alone (one
-- key: served by whichever node holds it, the client following ASK), declares those it
-- finds and passes the others back as missing (usage.lua's gone_check_at), which the
-- script then leaves alone.
local function declare_present(names)
  local wanted = {}
  for _, name in ipairs(names) do
    if not declared(name) then wanted[#wanted + 1] = '?' .. name end
  end
  if #wanted > 0 then error({err = DECLARE_FIRST .. ' ' .. table.concat(wanted, ' ')}) end
end
-- Whether the conversation `cid` (under `tag`) exists and is the caller's: a turn is gone
-- when its conversation hash is, whatever its own key still holds (retention.lua). `seen`
-- keeps the answers of one script run (several turns of one conversation, one HMGET).
-- The hash is a key the script derives: declared first (declare_first, above).
local function owned(tag, who, cid, seen)
  local mine = seen[cid]
  if mine == nil then
    local conv = tag .. ':conv:' .. cid
    declare_first({conv})
    mine = callers(conv, who)
    seen[cid] = mine
  end
  return mine
end
-- The turn `key` (interaction's row), read only once declared (above).
local function declared_interaction(key)
  declare_first({key})
  return interaction(key)
end
-- A request_id key `req` naming turn `iid`, whose key a run declared and found missing:
-- the turn is gone for good (Redis evicted it under a maxmemory-policy other than
-- noeviction, or it was deleted by hand; the turn's hash is the only record of its
-- request_id, so drop_missing.lua cannot find the key). The idempotency key dies with its
-- turn: deleted here, so a retry with it stores the turn again (as it would without the
-- key) and no later look-up pays the run with the turn declared again. Declared, the
-- turn's key is never taken for gone while a reshard has not moved it yet.
local function gone_request(req, iid)
  if redis.call('GET', req) == iid then redis.call('DEL', req) end
end
-- Whether the conversation `cid` (under `tag`) is the caller's (as owned), its hash read
-- only once declared (above).
local function declared_owned(tag, who, cid)
  local conv = tag .. ':conv:' .. cid
  declare_first({conv})
  return callers(conv, who)
end
-- As declared_owned, for a script reading several turns: `seen` keeps the answers of one
-- run, and an undeclared hash is not read but added to `missing`, which the script passes
-- to declare_first once it has been through them all (one more run for all of them).
local function owned_noting(tag, who, cid, seen, missing)
  local mine = seen[cid]
  if mine == nil then
    local conv = tag .. ':conv:' .. cid
    if declared(conv) then
      mine = callers(conv, who)
    else
      missing[#missing + 1] = conv
      mine = false
    end
    seen[cid] = mine
  end
  return mine
end
-- Whether a turn listed in `ints` (a conversation's id list, under `tag`) has no key here:
-- gone for good (evicted under a maxmemory-policy other than noeviction, deleted by hand),
-- or, mid-reshard on the slot's new node, not moved yet. Only a run that declares every
-- turn may tell which (drop_missing.lua, which Redis refuses while they are split), so the
-- caller only reports it. It checks a window of at most `window` turns, from position
-- `offset` modulo their number and wrapping past the newest to the oldest (the store picks
-- the offset at random per call, store.MemoryStore._gone_check; GetConversation's one call
-- ahead, get_conversation.lua): no call costs more than
-- O(log turns + window), however long the conversation, and repeated calls cover every
-- turn over time. A list no longer than the window is checked whole. Returns how many turns
-- it checked and whether one of them is missing. What keeps a conversation's
-- interaction_count (and its owner's bytes) from counting a turn that is gone
-- (GetConversation, ListConversations, a write at the byte limit: usage.lua's gone_turns).
-- At most `window` members of the sorted set `list` from position `offset` modulo its
-- size, wrapping past the last to the first (the whole set when it is no larger).
local function turn_window(list, offset, window)
  if window <= 0 then return {} end  -- (ZRANGE 0 -1 would be the whole list)
  local n = redis.call('ZCARD', list)
  if n == 0 then return {} end
  if n <= window then return redis.call('ZRANGE', list, 0, -1) end
  local first = offset % n
  local ids = redis.call('ZRANGE', list, first, first + window - 1)
  if #ids < window then
    for _, iid in ipairs(redis.call('ZRANGE', list, 0, window - #ids - 1)) do
      ids[#ids + 1] = iid
    end
  end
  return ids
end
-- The names of `names` its run did not declare, added to `wanted`: whether any was.
local function note_undeclared(names, wanted)
  local before = #wanted
  for _, name in ipairs(names) do
    if not declared(name) then wanted[#wanted + 1] = name end
  end
  return #wanted > before
end
local function missing_turn(tag, ints, offset, window, notes)
  -- Every key it reads declared: the conversation's hash, then its list, then the window's
  -- turns, each asked for with declare_first (one more run each) before any is read; or,
  -- given `notes` (a script that looks at several conversations, list_conversations.lua),
  -- the undeclared names added there and nothing read (0, false), for one declare_first
  -- of all of them.
  -- A window of 0: the check is skipped (the store's last runs of a read that raced a
  -- stream of writes, each adding a turn no run had declared: store.py's _run).
  if window <= 0 then return 0, false end
  local conv = string.sub(ints, 1, -6)  -- "<conv>:ints"
  local wanted = notes or {}
  if note_undeclared({conv}, wanted) then
    if notes then return 0, false end
    declare_first(wanted)
  end
  -- A chunked drop (drop_missing.lua) that dropped turns but did not reach its last
  -- chunk: the conversation's bytes still count them until a walk ends, so it is due.
  if redis.call('HEXISTS', conv, 'drop_pending') == 1 then return 0, true end
  -- A conversation without turns has no list: nothing to check, and its list is not
  -- declared (a key declared and missing makes Redis refuse the run while a reshard
  -- moves the slot: TRYAGAIN, UNAVAILABLE for as long as the move lasts).
  if tonumber(redis.call('HGET', conv, 'interaction_count') or '0') == 0 then
    return 0, false
  end
  if note_undeclared({ints}, wanted) then
    if notes then return 0, false end
    declare_first(wanted)
  end
  local ids = turn_window(ints, offset, window)
  if #ids == 0 then return 0, false end
  local names = {}
  for i, iid in ipairs(ids) do names[i] = tag .. ':int:' .. iid end
  if note_undeclared(names, wanted) then
    if notes then return #ids, false end
    declare_first(wanted)
  end
  for i = 1, #names, 1000 do
    local batch = {unpack(names, i, math.min(i + 999, #names))}
    if redis.call('EXISTS', unpack(batch)) < #batch then return #ids, true end
  end
  return #ids, false
end
