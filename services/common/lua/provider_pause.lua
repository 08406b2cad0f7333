-- A provider answered 429 with Retry-After: every replica holds back the provider's calls
-- (provider_admit.lua refuses while the pause runs). A pause only ever grows: a shorter
-- Retry-After seen later, by this replica or another, never ends a longer one early.
-- KEYS[1]  STRING the pause's end (ms on the Redis clock); it expires at that end
-- ARGV     pause_ms (from now)
-- Returns the milliseconds the pause still runs.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local until_ms = math.ceil(now + tonumber(ARGV[1]))
local current = tonumber(redis.call('GET', KEYS[1]))
if current ~= nil and current >= until_ms then
  return math.ceil(current - now)
end
-- Written as digits: a Lua number converts with 14 significant digits only.
redis.call('SET', KEYS[1], string.format('%.0f', until_ms), 'PX',
  string.format('%.0f', math.max(1, until_ms - math.floor(now))))
return until_ms - math.floor(now)
