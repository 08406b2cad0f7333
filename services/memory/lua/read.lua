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
