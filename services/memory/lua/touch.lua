-- Helper: moves a conversation to its new place in the user's list; update_time never goes
-- back, even if replicas' clocks disagree. Further field/value pairs go in the same HSET.
local function touch(conv, convs, cid, now_ms, old, ...)
  local now = tonumber(now_ms)
  local prev = tonumber(old)
  if now < prev then now = prev end
  redis.call('HSET', conv, 'update_time', string.format('%d', now), ...)
  if now ~= prev then
    redis.call('ZREM', convs, string.format('%015d', prev) .. ':' .. cid)
    redis.call('ZADD', convs, 0, string.format('%015d', now) .. ':' .. cid)
  end
end
