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
                    'summary_update_time', 'summary_evicted', 'tenant')
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
-- Whether the conversation `cid` (under `tag`) exists and is the caller's: a turn is gone
-- when its conversation hash is, whatever its own key still holds (retention.lua). `seen`
-- keeps the answers of one script run (several turns of one conversation, one HMGET).
local function owned(tag, who, cid, seen)
  local mine = seen[cid]
  if mine == nil then
    mine = callers(tag .. ':conv:' .. cid, who)
    seen[cid] = mine
  end
  return mine
end
