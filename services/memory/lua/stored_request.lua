-- needs: read
-- CheckStorage with a request_id: the caller's interaction already stored with it.
-- KEYS: req, then any key a run before asked to declare (read.lua's declare_first: the
-- turn it names, its conversation hash). ARGV: caller (read.lua), tag.
-- Returns {cid, data, fingerprint} (the request_fingerprint it was stored with, false
-- for none: the caller compares), or false when none is (the key expired, the
-- interaction or its conversation is gone, or it is not the caller's). A key naming a turn that is gone for
-- good (its key declared and missing: evicted, deleted by hand) dies with it
-- (gone_request, read.lua).
local iid = redis.call('GET', KEYS[1])
if not iid then return false end
local key = ARGV[2] .. ':int:' .. iid
local row = declared_interaction(key)
if not row[1] then
  gone_request(KEYS[1], iid)
  return false
end
if not declared_owned(ARGV[2], ARGV[1], row[1]) then return false end
return {row[1], row[2], redis.call('HGET', key, 'request_fingerprint')}
