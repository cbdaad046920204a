-- Claim an extra, unscheduled run of an entry ("trigger"), recorded in flight
-- like any claimed tick so that a crash before publishing cannot lose it.
-- Its tick is "now", nudged by a millisecond if it would coincide with a tick
-- of the entry's own schedule, so it can never share a task id with one.
-- KEYS: due, state, defs, inflight, flight
-- ARGV: name, expected version, grid step ms, grid anchor ms, lease ms
-- Returns: the tick, or false when the entry changed or is gone (re-read)
local now = now_ms()
local st = load_state(redis.call('HGET', KEYS[2], ARGV[1]))
if not st or tostring(st.ver) ~= ARGV[2] then return false end
local step, anchor = tonumber(ARGV[3]), tonumber(ARGV[4])
local tick = now
while (tick - anchor) % step == 0 or tick == st.last
    or redis.call('ZSCORE', KEYS[4], tick .. ':' .. ARGV[1]) do
  tick = tick + 1
end
local member = tick .. ':' .. ARGV[1]
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), member)
redis.call('HSET', KEYS[5], member, redis.call('HGET', KEYS[3], ARGV[1]))
return tick
