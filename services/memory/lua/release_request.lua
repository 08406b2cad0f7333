-- CheckStorage's release_claim: ends an attempt's reservation of a request_id, only
-- if that attempt (ARGV[1], its claim_token) still holds it.
-- KEYS: claim, then its holder's fingerprint (claim_request.lua).
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1], KEYS[2]) end
return 0
