-- Helper: every key of a conversation, named here and only here (services/memory/keys.py
-- is the Python side of the same layout). Retention (renew, PERSIST), eviction and delete
-- go through these lists, so a key a feature adds to a conversation or to an interaction
-- is expired, evicted and deleted with it once it is listed here; all of them carry the
-- owner's hash tag, so they live in one cluster slot with the conversation.
local function conversation_keys(tag, cid)
  return {tag .. ':conv:' .. cid, tag .. ':conv:' .. cid .. ':ints'}
end
local function interaction_keys(tag, iid)
  return {tag .. ':int:' .. iid}
end
-- Deletes one interaction's keys, and its request_id entry if it still names it (either
-- owner's of a shared tag: 'req', or 't:req', services/memory/keys.py request).
local function forget_interaction(tag, iid)
  local key = tag .. ':int:' .. iid
  local rid = redis.call('HGET', key, 'request_id')
  if rid then
    for _, kind in ipairs({':req:', ':t:req:'}) do
      local req = tag .. kind .. rid
      if redis.call('GET', req) == iid then redis.call('DEL', req) end
    end
  end
  redis.call('UNLINK', unpack(interaction_keys(tag, iid)))
end
