-- Acknowledge published in-flight ticks (see ack_all), or release unpublished
-- ones so that any instance re-publishes them at once (a clean shutdown).
-- KEYS: inflight, flight, inststats, then one history key per acknowledgement
-- ARGV: mode ('ack' | 'release'), instance id, history length, count n, then
--       n {member, task id, kind} triples ('ack') or n members ('release')
local n = tonumber(ARGV[4])
if ARGV[1] == 'ack' then
  ack_all(KEYS[1], KEYS[2], KEYS[3], ARGV[2], now_ms(), 5, n, 4, tonumber(ARGV[3]))
else
  for i = 5, 4 + n do redis.call('ZADD', KEYS[1], 'XX', 0, ARGV[i]) end
end
return n
