-- KEYS: the marks of deletions under way (store.MemoryStore._deleting_key).
-- ARGV: the mark, made_by: '' to remove it whatever its time; else (the resume's) only
-- while it was last made by then (its score, ms): a mark made again meanwhile (a call
-- deleting the conversation now, between two of its steps) is that call's to remove, not
-- the resume's.
if ARGV[2] ~= '' then
  local made = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not made or tonumber(made) > tonumber(ARGV[2]) then return 0 end
end
return redis.call('ZREM', KEYS[1], ARGV[1])
