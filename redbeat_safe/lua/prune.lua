-- Drop instances whose heartbeat expired (and, with ARGV[2], this one), with
-- their records, then remove the candidate static entries that no live
-- instance declares, so a rolling deploy never deletes an entry an older or
-- newer config still defines.
-- KEYS: reply, instances, instinfo, inststats, static, due, defs, state, aside,
--       seen, running, runlease, buffered, flight, then per candidate its history
--       key and its run-ledger key
-- ARGV: reply ttl ms, instance id leaving ('' for none), then the candidate
--       names (static entries the caller saw no live instance declare; checked
--       again here, atomically, against the instances live now)
-- Returns: names removed
-- Run twice (a lost reply), the second run returns the first run's names.
local r = replay()
if r then return r end
local now = now_ms()
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if ARGV[2] ~= '' then gone[#gone + 1] = ARGV[2] end
for i = 1, #gone do
  redis.call('ZREM', KEYS[2], gone[i])
  redis.call('HDEL', KEYS[3], gone[i])
  redis.call('HDEL', KEYS[4], gone[i])
  redis.call('ZREM', KEYS[10], gone[i])
end
local live = redis.call('ZRANGE', KEYS[2], 0, -1)
if #live == 0 then return remember({}) end  -- the last one leaving keeps everything
local declared = {}
for i = 1, #live do
  local ok, info = pcall(cjson.decode, redis.call('HGET', KEYS[3], live[i]) or '')
  if not ok or type(info) ~= 'table' or type(info.static) ~= 'table' then return remember({}) end
  for _, name in ipairs(info.static) do
    if type(name) == 'string' then declared[name] = true end
  end
end
local removed = {}
for i = 3, #ARGV do
  local name = ARGV[i]
  if not declared[name] and redis.call('SISMEMBER', KEYS[5], name) == 1 then
    redis.call('ZREM', KEYS[6], name)
    redis.call('HDEL', KEYS[7], name)
    redis.call('HDEL', KEYS[8], name)
    redis.call('HDEL', KEYS[9], name)
    redis.call('SREM', KEYS[5], name)
    redis.call('DEL', KEYS[9 + 2 * i], KEYS[10 + 2 * i])
    marker_clear(KEYS[11], KEYS[12], name)
    local buffered = redis.call('HGET', KEYS[13], name)
    if buffered then
      redis.call('HDEL', KEYS[13], name)
      redis.call('HDEL', KEYS[14], (string.gsub(buffered, '|[^|]*$', '')))
    end
    removed[#removed + 1] = name
  end
end
return remember(removed)
