-- Drop exact-cache entries of one tenant and give their bytes back
-- (generation_cache.drop_collection). KEYS: the tenant's ledger, its sizes, then the
-- entries (all one hash tag, the tenant's: one slot). Returns the bytes given back.
local ledger, sizes = KEYS[1], KEYS[2]
local freed = 0
for i = 3, #KEYS do
  local entry = KEYS[i]
  freed = freed + tonumber(redis.call('HGET', sizes, entry) or '0')
  redis.call('HDEL', sizes, entry)
  redis.call('ZREM', ledger, entry)
  redis.call('UNLINK', entry)
end
if freed > 0 then
  local used = tonumber(redis.call('HGET', sizes, '#total') or '0') - freed
  if used < 0 then used = 0 end
  redis.call('HSET', sizes, '#total', used)
end
return freed
