-- A call still running renews its slot's lease (see quota_enter.lua), on Redis' clock.
-- KEYS[1]  ZSET of the calls in progress: member = call id, score = lease end (ms, Redis clock)
-- ARGV     lease_ms, call id
-- Returns 1 (renewed) or 0 (the slot is gone: its lease ended before this renewal; it is
-- not taken again, which could exceed the limit).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[2])
if redis.call('PTTL', KEYS[1]) < lease then
  redis.call('PEXPIRE', KEYS[1], lease)
end
return 1
