-- Remove entries, whatever state their records are in, with their histories,
-- run ledgers, running markers and a tick buffered behind a running one.
-- Ticks already claimed stay in flight and are still published.
-- KEYS: reply, due, defs, state, static, aside, running, runlease, buffered, flight,
--       then per name its history key and its run-ledger key
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
  redis.call('DEL', KEYS[7 + 2 * i], KEYS[8 + 2 * i])
  marker_clear(KEYS[7], KEYS[8], name)
  local buffered = redis.call('HGET', KEYS[9], name)
  if buffered then  -- "<tick>:<entry>|<hold>": its definition copy goes with it
    redis.call('HDEL', KEYS[9], name)
    redis.call('HDEL', KEYS[10], (string.gsub(buffered, '|[^|]*$', '')))
  end
  if had > 0 then removed = removed + 1 end
end
remember({removed})
return removed
