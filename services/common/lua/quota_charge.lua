-- Counts LLM calls against the tenant's per-minute quota (fixed windows on the Redis
-- clock, so every gateway replica counts in the same window).
-- KEYS[1]  HASH  w = start of the current window (ms), n = calls counted in it
-- ARGV     limit, window_ms[, made]
-- Without made: one call about to be made, counted if the window has room. Returns -1
-- (counted) or the milliseconds until the window ends (refused, not counted).
-- With made: that many calls already made (a fallback's, a retry's), counted whatever
-- the limit, since they happened: the count may pass the limit, and then the tenant's
-- next calls are refused until the window ends. Returns -1.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
local start = now - now % window
local row = redis.call('HMGET', KEYS[1], 'w', 'n')
local n = 0
if tonumber(row[1]) == start then
  n = tonumber(row[2])
end
local made = tonumber(ARGV[3])
if made then
  n = n + made
elseif n + 1 > tonumber(ARGV[1]) then
  return start + window - now
else
  n = n + 1
end
redis.call('HSET', KEYS[1], 'w', start, 'n', n)
redis.call('PEXPIRE', KEYS[1], window)
return -1
