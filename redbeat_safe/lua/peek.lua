-- One read per beat loop: acknowledge what was published, heartbeat, re-lease
-- expired in-flight ticks to this instance (the reaper), and list due entries.
-- KEYS: due, state, inflight, flight, instances, meta, instinfo, inststats,
--       then one history key per acknowledgement
-- ARGV: instance id, heartbeat ttl ms, lease ms, max due, max reaped,
--       window (0..1, spreads instances over a long due list), history length,
--       ack count n, then n {member, task id, kind} triples
-- Returns: {now, epoch, dead instances?, registered?, next future tick, next lease deadline,
--           #due, name, score, state, ..., #reaped, member, definition, ...}
local now = now_ms()
local lease, max_due, max_reap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
ack_all(KEYS[3], KEYS[4], KEYS[8], ARGV[1], now, 9, tonumber(ARGV[8]), 9, tonumber(ARGV[7]))
redis.call('ZADD', KEYS[5], now + tonumber(ARGV[2]), ARGV[1])
local dead = #redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 1)

local out = {now, redis.call('HGET', KEYS[6], 'epoch') or '', dead, redis.call('HEXISTS', KEYS[7], ARGV[1])}
local future = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
out[#out + 1] = future[2] or ''
local reap = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, max_reap)
local leased = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
out[#out + 1] = leased[2] or ''

local count = redis.call('ZCOUNT', KEYS[1], '-inf', now)
local offset = 0
if count > max_due then offset = math.floor(tonumber(ARGV[6]) * (count - max_due + 1)) end
local due = {}
-- by rank, so only as many as are due: the members after them are in the future
if count > 0 then due = redis.call('ZRANGE', KEYS[1], offset, offset + math.min(max_due, count) - 1, 'WITHSCORES') end
out[#out + 1] = #due / 2
for i = 1, #due, 2 do
  out[#out + 1] = due[i]
  out[#out + 1] = due[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], due[i])
end

out[#out + 1] = #reap
for i = 1, #reap do
  redis.call('ZADD', KEYS[3], now + lease, reap[i])
  out[#out + 1] = reap[i]
  out[#out + 1] = redis.call('HGET', KEYS[4], reap[i])
end
return out
