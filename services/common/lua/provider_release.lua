-- A call admitted by provider_admit.lua ended: it leaves the in-flight ZSET, and the
-- tokens bucket gets back what the estimate overcharged (or pays what it undercharged:
-- a negative refund, which may leave the bucket in debt).
-- KEYS[1]  HASH tokens bucket (l, t)     KEYS[2]  ZSET calls in flight
-- ARGV     tok_capacity, tok_per_ms, refund, call id, ttl_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
redis.call('ZREM', KEYS[2], ARGV[4])
local capacity, per_ms, refund = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if capacity > 0 and refund ~= 0 then
  local row = redis.call('HMGET', KEYS[1], 'l', 't')
  local l, last = tonumber(row[1]), tonumber(row[2])
  if l == nil or last == nil then
    l, last = capacity, now
  end
  l = math.min(capacity, l + math.max(0, now - last) * per_ms + refund)
  redis.call('HSET', KEYS[1], 'l', l, 't', now)
  -- Kept until full again (a debt outlasts the ttl; the key gone, the debt would be too).
  redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[5]), math.ceil((capacity - l) / per_ms) + 1000))
end
return 1
