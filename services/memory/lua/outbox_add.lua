-- KEYS: the outbox (ZSET of jobs by due ms), its per-tenant counts (HASH tenant -> jobs),
-- the owners whose index job it refused (SET of [tenant, user] JSON): one hash tag, one
-- slot. ARGV: job, due ms, tenant, owner (JSON), the most jobs in all, the most of one
-- tenant (0: no share), whether the job indexes a turn (1), drops entries (0), or is a
-- deletion's drop written ahead (2). A deletion's drop has a reserve: refused only when
-- the outbox holds twice its most jobs, or its tenant twice its share. A full outbox (the
-- index down for long, its backlog of turns to index) refused it before, and a replica
-- killed before its drop ran lost it. A job leaves once dropped; until then it stays, a
-- deletion of a missing id's too (the job may be a racing deletion's), so the reserve has
-- a bound per tenant: one deleting made-up ids while the index is down fills its own.
-- Returns 1 when the job is queued (one there already only gets its new due time, and is
-- counted once: a retry is never refused), 0 when the outbox holds its most jobs, -1 when
-- the tenant holds its share. A refused index job notes its owner for the sweep's catch-up (at most
-- as many owners as jobs); a refused drop needs nothing: the sweep removes what Redis no
-- longer holds.
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
  return 1
end
local size = redis.call('ZCARD', KEYS[1])
if size == 0 then
  -- Counts of jobs that are gone (the outbox evicted or deleted) never hold a share.
  redis.call('DEL', KEYS[2])
end
local answer = 1
local share = tonumber(ARGV[6])
if ARGV[7] == '2' then
  if size >= 2 * tonumber(ARGV[5]) then
    answer = 0
  elseif share > 0 and tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0') >= 2 * share then
    answer = -1
  end
elseif size >= tonumber(ARGV[5]) then
  answer = 0
elseif share > 0 and tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0') >= share then
  answer = -1
end
if answer == 1 then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
elseif ARGV[7] == '1' and redis.call('SCARD', KEYS[3]) < tonumber(ARGV[5]) then
  redis.call('SADD', KEYS[3], ARGV[4])
end
return answer
