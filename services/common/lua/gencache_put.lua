-- Store one exact-cache entry within its tenant's byte budget (generation_cache.put).
-- KEYS: the entry, the tenant's ledger (sorted set: entry -> expiry, epoch ms), the
-- tenant's sizes (hash: entry -> bytes, and '#total'), [the collection's index, its drop
-- mark (generation_cache.dropped_key)]. One
-- hash tag (the tenant's): one slot, so one atomic script on a cluster too.
-- ARGV: value, ttl ms, cost (bytes), budget (bytes), lifetime of the bookkeeping ms,
-- most entries released or evicted by one call.
-- Returns 1 stored, 0 not (the entry alone is over the budget, or room could not be made
-- within the batch), 2 not (its collection was deleted: the search read it before).
local entry, ledger, sizes, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl, cost, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local keep, batch = tonumber(ARGV[5]), tonumber(ARGV[6])
-- Deleted after the search read it: nobody can read this entry, and the drop that would
-- remove it has run already.
if KEYS[5] and redis.call('EXISTS', KEYS[5]) == 1 then return 2 end
-- Never fits: evict nothing for it.
if cost > budget then return 0 end
-- Redis' clock, not a replica's: every gateway replica scores with the same one.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local used = tonumber(redis.call('HGET', sizes, '#total') or '0')

local function release(member)
  used = used - tonumber(redis.call('HGET', sizes, member) or '0')
  redis.call('HDEL', sizes, member)
end

-- Entries Redis expired give their bytes back.
local gone = redis.call('ZRANGEBYSCORE', ledger, '-inf', now, 'LIMIT', 0, batch)
for _, member in ipairs(gone) do release(member) end
if #gone > 0 then redis.call('ZREM', ledger, unpack(gone)) end
-- A key stored again (refresh): its old bytes go first.
if redis.call('ZSCORE', ledger, entry) then
  release(entry)
  redis.call('ZREM', ledger, entry)
end
-- Over the budget: this tenant's soonest-expiring entries make room (never another's:
-- the ledger is the tenant's own).
local evicted = 0
while used + cost > budget and evicted < batch do
  local first = redis.call('ZPOPMIN', ledger)
  if #first == 0 then
    -- Nothing tracked: no bytes either (a sizes hash left past its ledger must not keep
    -- refusing every write).
    redis.call('DEL', sizes)
    used = 0
    break
  end
  release(first[1])
  redis.call('UNLINK', first[1])
  evicted = evicted + 1
end
if used < 0 then used = 0 end
if used + cost > budget then
  redis.call('UNLINK', entry)  -- an old value of it was released above
  redis.call('HSET', sizes, '#total', used)
  redis.call('PEXPIRE', ledger, keep)
  redis.call('PEXPIRE', sizes, keep)
  return 0
end
redis.call('SET', entry, ARGV[1], 'PX', ttl)
redis.call('ZADD', ledger, now + ttl, entry)
redis.call('HSET', sizes, entry, cost, '#total', used + cost)
-- The bookkeeping outlives every entry it names (no TTL is above keep).
redis.call('PEXPIRE', ledger, keep)
redis.call('PEXPIRE', sizes, keep)
if index then
  redis.call('ZADD', index, now + ttl, entry)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now)
  redis.call('PEXPIRE', index, keep)
end
return 1
