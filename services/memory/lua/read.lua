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
                    'summary_update_time', 'summary_evicted')
end
-- Whether the conversation `cid` (under `tag`) exists and is `user`'s: a turn is gone when
-- its conversation hash is, whatever its own key still holds (retention.lua). `seen`
-- keeps the answers of one script run (several turns of one conversation, one HGET).
local function owned(tag, user, cid, seen)
  local owner = seen[cid]
  if owner == nil then
    owner = redis.call('HGET', tag .. ':conv:' .. cid, 'user') or false
    seen[cid] = owner
  end
  return owner == user
end
