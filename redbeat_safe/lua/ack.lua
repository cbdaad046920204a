-- Acknowledge published in-flight ticks (see ack_all), or release unpublished
-- ones so that any instance re-publishes them at once (a clean shutdown).
-- KEYS: reply, inflight, flight, holder, inststats, instances, state, counters,
--       wake, then one history key per acknowledgement
-- ARGV: reply ttl ms, mode ('ack' | 'release'), instance id, history length,
--       count n, then n {member, task id, kind} triples ('ack') or n members ('release')
-- Returns: n
--
-- A release hands back only the ticks this instance still holds: one whose
-- lease ran out may be another instance's by now, and releasing it would make
-- a third instance publish it again. A release wakes the sleeping beats, so
-- one of them publishes the ticks handed back at once, not at its next loop.
-- Run twice (a lost reply), the second run changes nothing and returns n again.
local r = replay()
if r then return r[1] end
local n = tonumber(ARGV[5])
if ARGV[2] == 'ack' then
  ack_all({inflight = 2, flight = 3, holder = 4, stats = 5, instances = 6, state = 7, counters = 8}, ARGV[3], now_ms(), 6, n, 10,
          tonumber(ARGV[4]))
else
  local released = 0
  for i = 6, 5 + n do
    if redis.call('HGET', KEYS[4], ARGV[i]) == ARGV[3] then
      redis.call('ZADD', KEYS[2], 'XX', 0, ARGV[i])
      released = released + 1
    end
  end
  if released > 0 then wake(KEYS[9]) end
end
remember({n})
return n
