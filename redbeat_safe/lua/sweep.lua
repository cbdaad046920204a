-- Remove entries that finished more than the retention ago, with everything they
-- left (definition, state, history, run ledger, markers): an `at` that ran, an
-- entry past its `end` or `limit`.
-- KEYS: reply, finished, due, defs, state, static, aside, running, runlease,
--       buffered, flight, then per name its history key and its run-ledger key
-- ARGV: reply ttl ms, retention ms, names (candidates the caller read from `finished`)
-- Returns: the names removed.
--
-- Each candidate is checked again here, atomically: it must still be in `finished`
-- before the cutoff and its state must say done, so an entry resumed or changed
-- since the caller read it is left alone (and dropped from `finished`).
-- Run twice (a lost reply), the second run returns the first run's names.
local r = replay()
if r then return r end
local now = now_ms()
local cutoff = now - tonumber(ARGV[2])
local removed = {}
for i = 3, #ARGV do
  local name = ARGV[i]
  local at = tonumber(redis.call('ZSCORE', KEYS[2], name) or '')
  local st = load_state(redis.call('HGET', KEYS[5], name))
  if at and at <= cutoff then
    if st and st.done and not redis.call('ZSCORE', KEYS[3], name) then
      redis.call('HDEL', KEYS[4], name)
      redis.call('HDEL', KEYS[5], name)
      redis.call('SREM', KEYS[6], name)
      redis.call('HDEL', KEYS[7], name)
      marker_clear(KEYS[8], KEYS[9], name)
      redis.call('HDEL', KEYS[10], name)
      redis.call('DEL', KEYS[6 + 2 * i], KEYS[7 + 2 * i])
      removed[#removed + 1] = name
    end
    redis.call('ZREM', KEYS[2], name)
  end
end
return remember(removed)
