-- Announce a beat instance and the static entry names its config declares.
-- KEYS: instances, instinfo, meta
-- ARGV: instance id, heartbeat ttl ms, info JSON, candidate epoch
-- Returns: {now, epoch}
-- Idempotent by construction: a second run writes the same values and returns
-- the same epoch.
local now = now_ms()
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('HSETNX', KEYS[3], 'epoch', ARGV[4])
return {now, redis.call('HGET', KEYS[3], 'epoch')}
