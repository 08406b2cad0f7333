-- A call enters the tenant's concurrent-calls quota, or is refused.
-- KEYS[1]  ZSET of the calls in progress: member = call id, score = lease end (ms, Redis clock)
-- ARGV     limit, lease_ms, call id
-- Returns 1 (entered) or 0 (the quota is full). A member whose lease ended (its gateway
-- crashed, or the call outlived its lease) no longer counts.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return 1
