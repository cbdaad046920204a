-- Remove entries, whatever state their records are in, with their histories.
-- Ticks already claimed stay in flight and are still published.
-- KEYS: reply, due, defs, state, static, aside, then one history key per name
-- ARGV: reply ttl ms, names...
-- Returns: how many existed (had any record).
-- Run twice (a lost reply), the second run returns the first run's count.
local r = replay()
if r then return r[1] end
local removed = 0
for i = 2, #ARGV do
  local name = ARGV[i]
  local had = redis.call('ZREM', KEYS[2], name) + redis.call('HDEL', KEYS[3], name) + redis.call('HDEL', KEYS[4], name)
    + redis.call('HDEL', KEYS[6], name)
  redis.call('SREM', KEYS[5], name)
  redis.call('DEL', KEYS[5 + i])
  if had > 0 then removed = removed + 1 end
end
remember({removed})
return removed
