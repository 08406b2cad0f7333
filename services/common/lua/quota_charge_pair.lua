-- Counts one write against two per-window quotas of a tenant at once (its bytes and its
-- objects written), all or nothing, in fixed windows on the Redis clock (as
-- quota_charge.lua counts one). Both keys carry the tenant's hash tag: one slot.
-- KEYS[1], KEYS[2]  HASH  w = start of the current window (ms), n = uses counted in it
-- ARGV     limit1, count1, limit2, count2, window_ms
-- Returns {0, -1} (both counted) or {i, ms until the window ends}: refused by quota i (the
-- first one checked first), none counted. Counting the first and giving it back when the
-- second did not fit was not the same: a give-back landing in the next window took from
-- that window's count (so a tenant could pass the quota), and a call cancelled between
-- the two kept its first count without its write.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[5])
local start = now - now % window
local counts = {}
for i = 1, 2 do
  local row = redis.call('HMGET', KEYS[i], 'w', 'n')
  local n = 0
  if tonumber(row[1]) == start then
    n = tonumber(row[2])
  end
  local count = tonumber(ARGV[2 * i])
  if n + count > tonumber(ARGV[2 * i - 1]) then
    return {i, start + window - now}
  end
  counts[i] = n + count
end
for i = 1, 2 do
  redis.call('HSET', KEYS[i], 'w', start, 'n', counts[i])
  redis.call('PEXPIRE', KEYS[i], window)
end
return {0, -1}
