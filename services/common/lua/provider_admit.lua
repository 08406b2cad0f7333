-- One upstream call asks to start under a provider's declared limits, shared by every
-- replica: a requests bucket, a tokens bucket (token buckets refilled continuously on the
-- Redis clock) and the calls in flight (a ZSET of leases, as in quota_enter.lua).
-- All or nothing: a refused call takes nothing.
-- KEYS[1]  HASH requests bucket: l = level, t = last refill (ms)
-- KEYS[2]  HASH tokens bucket, same fields
-- KEYS[3]  ZSET calls in flight: member = call id, score = lease end (ms)
-- KEYS[4]  STRING the end (ms, Redis clock) of a 429's Retry-After pause, set by
--          provider_pause.lua; it expires when the pause ends
-- ARGV     req_capacity, req_per_ms, tok_capacity, tok_per_ms, tok_cost, flight_limit,
--          lease_ms, call id, ttl_ms   (a capacity or limit of 0: that limit is off)
-- Returns {wait, floor}. wait: 0 (admitted), the milliseconds until the pause ends or the
-- buckets can pay (> 0), or -1 (the in-flight limit is full: nobody knows when a call ends,
-- ask again soon). floor: milliseconds (rounded down) before which no further call of the
-- scope can be admitted, whatever its cost: the pause left, or the requests bucket's time
-- to hold one request again (it only refills; nothing but admissions takes from it);
-- 0 when none is known. Tokens are not in it: a call's cost and refunds move them.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local ttl = tonumber(ARGV[9])

local function level(key, capacity, per_ms)
  local row = redis.call('HMGET', key, 'l', 't')
  local l, last = tonumber(row[1]), tonumber(row[2])
  if l == nil or last == nil then
    return capacity
  end
  return math.min(capacity, l + math.max(0, now - last) * per_ms)
end

local req_cap, req_rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local tok_cap, tok_rate = tonumber(ARGV[3]), tonumber(ARGV[4])
-- A call dearer than the whole bucket waits for a full one, or it would wait forever; it
-- is charged all it costs (the bucket owes the rest: the next calls wait for it).
local cost = tonumber(ARGV[5])
local need = math.min(cost, tok_cap)
local flight_limit, lease = tonumber(ARGV[6]), tonumber(ARGV[7])

-- The provider asked every caller to wait (a 429 seen by any replica): nothing starts.
local paused_until = tonumber(redis.call('GET', KEYS[4]))
if paused_until ~= nil and paused_until > now then
  return {math.max(1, math.ceil(paused_until - now)), math.floor(paused_until - now)}
end

if flight_limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= flight_limit then
    return {-1, 0}
  end
end
local wait, req_level, tok_level, floor = 0, 0, 0, 0
if req_cap > 0 then
  req_level = level(KEYS[1], req_cap, req_rate)
  if req_level < 1 then
    wait = math.max(wait, (1 - req_level) / req_rate)
    floor = wait
  end
end
if tok_cap > 0 then
  tok_level = level(KEYS[2], tok_cap, tok_rate)
  if tok_level < need then
    wait = math.max(wait, (need - tok_level) / tok_rate)
  end
end
if wait > 0 then
  return {math.max(1, math.ceil(wait)), math.floor(floor)}
end
if req_cap > 0 then
  redis.call('HSET', KEYS[1], 'l', req_level - 1, 't', now)
  redis.call('PEXPIRE', KEYS[1], ttl)
  if req_level - 1 < 1 then
    floor = (2 - req_level) / req_rate
  end
end
if tok_cap > 0 then
  local left = tok_level - cost
  redis.call('HSET', KEYS[2], 'l', left, 't', now)
  -- Kept until full again: a bucket in debt takes longer than the ttl to refill, and a
  -- key gone with its debt would be a full bucket.
  redis.call('PEXPIRE', KEYS[2], math.max(ttl, math.ceil((tok_cap - left) / tok_rate) + 1000))
end
if flight_limit > 0 then
  redis.call('ZADD', KEYS[3], now + lease, ARGV[8])
  if redis.call('PTTL', KEYS[3]) < lease then
    redis.call('PEXPIRE', KEYS[3], lease)
  end
end
return {0, math.floor(floor)}
