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
-- Deletes one interaction's keys, and its request_id entry (rid: the turn's request_id,
-- '' for none) if it still names it: either owner's of a shared tag, 'req' or 't:req'
-- (services/memory/keys.py request). Its caller declared those that may exist (eviction
-- declares both; DeleteInteraction both, then, once a slot move refused that run, only
-- those it found, as a missing key declared has Redis refuse the run for the whole move):
-- one undeclared is not there to read.
local function forget_interaction(tag, iid, rid)
  if rid ~= '' then
    for _, kind in ipairs({':req:', ':t:req:'}) do
      local req = tag .. kind .. rid
      if declared(req) and redis.call('GET', req) == iid then redis.call('DEL', req) end
    end
  end
  for _, key in ipairs(interaction_keys(tag, iid)) do redis.call('UNLINK', key) end
end
-- The turns whose keys the caller declared for deletion (eviction): ARGV ends with an
-- iid and its request_id ('' for none) per turn, then their number; KEYS holds their
-- interaction keys and request_id keys. A set: iid -> request_id.
local function declared_turns()
  local n = tonumber(ARGV[#ARGV])
  local out = {}
  for i = #ARGV - 2 * n, #ARGV - 1, 2 do out[ARGV[i]] = ARGV[i + 1] end
  return out
end
