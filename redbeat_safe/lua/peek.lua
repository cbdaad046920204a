-- One read per beat loop: acknowledge what was published, heartbeat, re-lease
-- expired in-flight ticks to this instance (the reaper), and list due entries.
-- KEYS: reply, due, state, inflight, flight, holder, instances, meta, instinfo,
--       inststats, counters, then one history key per acknowledgement
-- ARGV: reply ttl ms, instance id, heartbeat ttl ms, lease ms, max due, max reaped,
--       split window ms (see below), history length,
--       ack count n, then n {member, task id, kind} triples
-- Returns: {now, epoch, dead instances?, registered?, next future tick, next lease deadline,
--           #due, name, score, version (-1: unreadable), runs, definition hash or what is wrong, ...,
--           #reaped, member, definition (false if missing), ..., entries due in all}
--
-- Splitting a burst: the instances that heartbeated within the split window are
-- ranked by id (a stable order), and instance r of n reads its part of the due
-- list, from position r * count / n, at most count / n of it. Two live instances
-- therefore claim different entries instead of racing over the same ones (the
-- claim's compare-and-set still decides; this only makes conflicts rare). An
-- instance that stops heartbeating leaves the ranking after the window, and the
-- others' parts then cover the whole list: a dead instance's part waits at most
-- the window. Run twice, this part is a fresh read like any later call's.
--
-- Run twice (a lost reply): the first run's acknowledgements and re-leases are
-- recorded in KEYS[1]; the second run applies neither again and hands back the
-- same re-leased ticks, which are leased to this instance, so they are not lost
-- for a lease. Everything else it returns is a fresh read, as one later call's.
local now = now_ms()
local instance, lease, max_due, max_reap = ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local reaped = replay()
if not reaped then
  local acks = tonumber(ARGV[9])
  ack_all({inflight = 4, flight = 5, holder = 6, stats = 10, instances = 7, state = 3, counters = 11}, instance, now, 10, acks, 12,
          tonumber(ARGV[8]))
  reaped = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, max_reap)
  for i = 1, #reaped do
    redis.call('ZADD', KEYS[4], now + lease, reaped[i])
    redis.call('HSET', KEYS[6], reaped[i], instance)
  end
  if acks > 0 or #reaped > 0 then remember(reaped) end
end
redis.call('ZADD', KEYS[7], now + tonumber(ARGV[3]), instance)
local dead = #redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, 1)

local out = {now, redis.call('HGET', KEYS[8], 'epoch') or '', dead, redis.call('HEXISTS', KEYS[9], instance)}
-- bounded by the last tick there can be: a score planted beyond it (inf) is never
-- due, and never what a beat sleeps towards
local future = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, int_json(MAX_TICK), 'WITHSCORES', 'LIMIT', 0, 1)
out[#out + 1] = future[2] or ''
local leased = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. now, int_json(MAX_TICK), 'WITHSCORES', 'LIMIT', 0, 1)
out[#out + 1] = leased[2] or ''

local count = redis.call('ZCOUNT', KEYS[2], '-inf', now)
local window = tonumber(ARGV[7])
local offset, take = 0, math.min(max_due, count)
if count > 0 then
  -- heartbeat deadlines of instances that heartbeated within the window (their ttl
  -- taken as ours: beats of one app share their settings)
  local live = redis.call('ZRANGEBYSCORE', KEYS[7], now + tonumber(ARGV[3]) - window, '+inf')
  if #live > 1 then
    table.sort(live)
    local rank = 0
    for i = 1, #live do if live[i] == instance then rank = i - 1 end end
    offset = math.floor(rank * count / #live)
    take = math.min(max_due, math.ceil(count / #live), count - offset)
  end
end
local due = {}
-- by rank, so only as many as are due: the members after them are in the future
if take > 0 then due = redis.call('ZRANGE', KEYS[2], offset, offset + take - 1, 'WITHSCORES') end
out[#out + 1] = #due / 2
for i = 1, #due, 2 do
  local st, problem = load_state(redis.call('HGET', KEYS[3], due[i]))
  if st and not is_int(tonumber(due[i + 1]), 0, MAX_TICK) then st, problem = nil, 'its next tick ' .. due[i + 1] .. ' is not whole ms up to year 9999' end
  out[#out + 1] = due[i]
  out[#out + 1] = due[i + 1]
  if st then
    out[#out + 1] = st.ver
    out[#out + 1] = st.runs
    out[#out + 1] = st.dh
  else
    out[#out + 1] = -1
    out[#out + 1] = 0
    out[#out + 1] = problem
  end
end

out[#out + 1] = #reaped
for i = 1, #reaped do
  out[#out + 1] = reaped[i]
  out[#out + 1] = redis.call('HGET', KEYS[5], reaped[i])
end
out[#out + 1] = count
return out
