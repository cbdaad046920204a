-- Remove entries and their histories. Ticks already claimed stay in flight
-- and are still published.
-- KEYS: due, defs, state, static, then one history key per name
-- ARGV: names...
-- Returns: how many existed.
local removed = 0
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('SREM', KEYS[4], ARGV[i])
  removed = removed + redis.call('HDEL', KEYS[3], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
  redis.call('DEL', KEYS[4 + i])
end
return removed
