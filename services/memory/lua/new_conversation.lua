-- Helper (after read.lua and usage.lua): a new conversation, for create_conversation.lua
-- and for create_interaction.lua's turn that starts one (the conversation and its first
-- turn in one atomic step: no conversation exists unless its first turn was stored).
-- Whether the owner may have one more conversation: expired ones still listed do not
-- count (reconcile drops them before refusing).
local function conversation_room(tag, convs, limit)
  if redis.call('ZCARD', convs) < limit then return true end
  reconcile(tag)
  return redis.call('ZCARD', convs) < limit
end
-- The bytes a new conversation named `name` counts (usage.lua).
local function conversation_size(name)
  return CONVERSATION_OVERHEAD + #name
end
-- Writes the conversation (checked already): its hash, its entry in the owner's list
-- (member "<now:015d>:<cid>") and its bytes. The caller renews it (retention.lua). Its
-- owner is recorded whole, user and tenant (`who`, read.lua's caller): two owners may
-- share the tag.
local function make_conversation(tag, cid, conv, convs, who, name, now, ttl_ms, max_turns,
                                 summary_disabled)
  local size = conversation_size(name)
  local user, tenant = caller(who)
  redis.call('HSET', conv, 'user', user, 'tenant', tenant, 'name', name, 'create_time', now,
             'update_time', now, 'interaction_count', 0, 'ttl_ms', ttl_ms,
             'max_turns', max_turns, 'summary_disabled', summary_disabled)
  redis.call('ZADD', convs, 0, string.format('%015d', tonumber(now)) .. ':' .. cid)
  redis.call('HSET', usage_key(tag), cid, size)
  redis.call('HINCRBY', usage_key(tag), 'total', size)
end
