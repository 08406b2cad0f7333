-- needs: read usage
-- KEYS: int, usage, the turn's conversation hash and its list of turns (the store names
-- them from the data it read), the owner's list of conversations, then any key a run
-- before asked to declare (read.lua's declare_first: the window's turns at the byte limit,
-- usage.lua's gone_turns). Every key it touches is declared: at the limit it reads the
-- list and a window of turns, which Redis Cluster and script-routing proxies must know. ARGV: caller (read.lua), tag, SHA-1 (hex) of the data read before,
-- new data, max bytes (of the owner), then the window of the check for gone turns at the
-- limit (usage.lua's gone_check_at: its offset, its turns).
-- Compare-and-set: returns 1 when updated, 0 when missing or not the caller's, 2 when the
-- data changed since it was read (the caller reads again and retries), 3 when the
-- larger data does not fit the owner's bytes (nothing written). The caller sends
-- a digest of what it read, not the data itself: 40 bytes however large the turn. HSET
-- keeps the key's time to live.
gone_check_at(6)
local row = interaction(KEYS[1])
if row[1] then
  local conv = ARGV[2] .. ':conv:' .. row[1]
  declare_first({conv, conv .. ':ints'})
end
if not row[1] or not declared_owned(ARGV[2], ARGV[1], row[1]) then
  return 0
end
if redis.sha1hex(row[2]) ~= ARGV[3] then return 2 end
if not charge(ARGV[2], row[1], #ARGV[4] - #row[2], tonumber(ARGV[5])) then return 3 end
redis.call('HSET', KEYS[1], 'data', ARGV[4])
return 1
