-- Counts one LLM call against the tenant's per-minute quota (fixed windows on the Redis
-- clock, so every gateway replica counts in the same window).
-- KEYS[1]  HASH  w = start of the current window (ms), n = calls counted in it
-- ARGV     limit, window_ms
-- Returns -1 (counted) or the milliseconds until the window ends (refused, not counted).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
local start = now - now % window
local row = redis.call('HMGET', KEYS[1], 'w', 'n')
local n = 0
if tonumber(row[1]) == start then
  n = tonumber(row[2])
end
if n + 1 > tonumber(ARGV[1]) then
  return start + window - now
end
redis.call('HSET', KEYS[1], 'w', start, 'n', n + 1)
redis.call('PEXPIRE', KEYS[1], window)
return -1
