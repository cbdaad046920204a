-- Drop instances whose heartbeat expired (and, with ARGV[1], this one), then
-- remove static entries that no live instance declares any more, so a rolling
-- deploy never deletes an entry an older or newer config still defines.
-- KEYS: instances, instinfo, static, due, defs, state
-- ARGV: instance id leaving ('' for none)
-- Returns: names removed
local now = now_ms()
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[1] ~= '' then gone[#gone + 1] = ARGV[1] end
for i = 1, #gone do
  redis.call('ZREM', KEYS[1], gone[i])
  redis.call('HDEL', KEYS[2], gone[i])
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
if #live == 0 then return {} end  -- the last one leaving keeps everything
local declared = {}
for i = 1, #live do
  local ok, info = pcall(cjson.decode, redis.call('HGET', KEYS[2], live[i]) or '')
  if not ok or type(info) ~= 'table' or type(info.static) ~= 'table' then return {} end
  for _, name in ipairs(info.static) do declared[name] = true end
end
local removed = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if not declared[name] then
    redis.call('ZREM', KEYS[4], name)
    redis.call('HDEL', KEYS[5], name)
    redis.call('HDEL', KEYS[6], name)
    redis.call('SREM', KEYS[3], name)
    removed[#removed + 1] = name
  end
end
return removed
