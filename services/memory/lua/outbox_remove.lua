-- KEYS: the outbox, its per-tenant counts (outbox_add.lua). ARGV: job, its tenant.
-- Removes the job; its tenant's count goes down only if it was there (two replicas may
-- both finish one job).
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[2], -1) <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
  end
end
return 0
