-- needs: read
-- CheckStorage with a request_id and a claim_token: the caller's interaction already
-- stored with request_id, else request_id reserved for this attempt (renewed when it is
-- already), unless another attempt holds it.
-- KEYS: req, claim, claimfp (the holder's fingerprint), then any key a run before asked
-- to declare (read.lua's declare_first: the turn req names, its conversation hash; checked
-- before anything is written).
-- ARGV: caller (read.lua), tag, claim_token, claim_ms, the attempt's fingerprint ('' for
-- none).
-- Returns {1, cid, data, fingerprint} stored already (the request_fingerprint it was
-- stored with, false for none: the caller compares), {2, fingerprint} another attempt
-- holds it (the fingerprint it claimed with, false for none: the caller compares it
-- first, so a request that can never succeed is told so rather than to retry), {0}
-- reserved.
local iid = redis.call('GET', KEYS[1])
if iid then
  local key = ARGV[2] .. ':int:' .. iid
  local row = declared_interaction(key)
  if not row[1] then
    gone_request(KEYS[1], iid)  -- its turn is gone for good: the key dies with it
  elseif declared_owned(ARGV[2], ARGV[1], row[1]) then
    return {1, row[1], row[2], redis.call('HGET', key, 'request_fingerprint')}
  end
end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[3] then return {2, redis.call('GET', KEYS[3])} end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
-- Set (or cleared) with the claim and for as long: it always describes the holder.
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[4])
else
  redis.call('DEL', KEYS[3])
end
return {0}
