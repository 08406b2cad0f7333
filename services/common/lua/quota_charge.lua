-- Counts a tenant's uses of a per-window quota (LLM calls, objects written) in fixed
-- windows on the Redis clock, so every gateway replica counts in the same window.
-- KEYS[1]  HASH  w = start of the current window (ms), n = uses counted in it
-- ARGV     limit, window_ms, count, made
-- made '0': count uses about to happen (one LLM call, the objects of one write), counted
-- all together if the window has room for all of them. Returns -1 (counted) or the
-- milliseconds until the window ends (refused, none counted).
-- made '1': count uses that happened already (a fallback's, a retry's LLM calls), counted
-- whatever the limit: the count may pass the limit, and then the tenant's next uses are
-- refused until the window ends; a negative count gives uses back (never below 0).
-- Returns -1.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
local start = now - now % window
local row = redis.call('HMGET', KEYS[1], 'w', 'n')
local n = 0
if tonumber(row[1]) == start then
  n = tonumber(row[2])
end
local count = tonumber(ARGV[3])
if ARGV[4] ~= '1' and n + count > tonumber(ARGV[1]) then
  return start + window - now
end
n = n + count
if n < 0 then
  n = 0  -- a refund (a negative count) landing in the next window
end
redis.call('HSET', KEYS[1], 'w', start, 'n', n)
redis.call('PEXPIRE', KEYS[1], window)
return -1
