-- Announce a beat instance and the static entry names its config declares.
-- KEYS: instances, instinfo, meta
-- ARGV: instance id, heartbeat ttl ms, info JSON, candidate epoch, this version's key layout
-- Returns: {now, epoch, layout}. The layout is the one the keys already use (set by
-- the first instance to register); when it is not ours the script writes nothing
-- and returns it with an empty epoch, so a beat of another version never touches
-- keys it would misread.
-- Atomic: one script. Idempotent by construction: a second run (a lost reply, a
-- retry) writes the same values and returns the same epoch and layout.
local now = now_ms()
local layout = redis.call('HGET', KEYS[3], 'layout')
if layout and layout ~= ARGV[5] then
  return {now, '', layout}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSETNX', KEYS[3], 'epoch', ARGV[4])
redis.call('HSETNX', KEYS[3], 'layout', ARGV[5])
return {now, redis.call('HGET', KEYS[3], 'epoch'), ARGV[5]}
