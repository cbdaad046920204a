-- One read per beat loop: acknowledge what was published, heartbeat, re-lease
-- expired in-flight ticks to this instance (the reaper), and list due entries.
-- KEYS: reply, due, state, inflight, flight, holder, instances, meta, instinfo,
--       inststats, counters, seen, wake, ledgers, running, runlease, buffered,
--       then one history key per acknowledgement
-- ARGV: reply ttl ms, instance id, heartbeat ttl ms, lease ms, max due, max reaped,
--       split window ms (see below), history length,
--       ack count n, then n {member, task id, kind} triples
-- Returns: {now, epoch, dead instances?, registered?, next future tick, next lease deadline,
--           #due, name, score, version (-1: unreadable), runs, definition hash or what is wrong, ...,
--           #reaped, member, definition (false if missing), ..., entries due in all,
--           the latest wake-up id ('' for none), how many instances share the due list,
--           how many worker processes keep the run ledger}
--
-- Running markers whose lease ran out (a worker lost mid-run, a message that never
-- reached one) are dropped here, and the tick an entry's buffer_one policy held
-- back is handed to the reaper: an entry is never blocked by a run nobody reports.
--
-- The wake-up id is read in the same step as the due list: a beat that then
-- waits for a wake-up after it (store.py) cannot miss a change made after this
-- read, and one made before it is already in the due list and next tick.
--
-- Splitting a burst: the instances that did their part within the split window
-- (`seen`: a peek that found its part empty, or a claim, writes it) are ranked
-- by id, with this one among them, and instance r of n reads its own part of
-- the due list: positions [r*c/n, (r+1)*c/n), where c is every due entry, or,
-- once some have been due longer than the window, only the oldest
-- min(overdue, n*max due) of them. Live instances therefore claim different
-- entries instead of racing over the same ones (the claim's compare-and-set
-- still decides every tick; this only makes conflicts rare). A peek that hands
-- an instance a part does not count it as live: its claim does. So an instance
-- that peeks and then stalls (blocked on the broker, paused, failing) stops
-- holding a part one window after it last did its part, and the caller keeps
-- the window shorter than the misfire grace (half the lease): the others take
-- its part over while its ticks are late, never missed.
--
-- Run twice (a lost reply): the first run's acknowledgements and re-leases are
-- recorded in KEYS[1]; the second run applies neither again and hands back the
-- same re-leased ticks, which are leased to this instance, so they are not lost
-- for a lease. Everything else it returns is a fresh read, as one later call's
-- (the split included), and its other writes, this instance's heartbeat and
-- (when its part is empty) its `seen` time, are the writes a later call makes.
local now = now_ms()
local instance, lease, max_due, max_reap = ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local reaped = replay()
if not reaped then
  local acks = tonumber(ARGV[9])
  ack_all({inflight = 4, flight = 5, holder = 6, stats = 10, instances = 7, state = 3, counters = 11}, instance, now, 10, acks, 18,
          tonumber(ARGV[8]))
  reaped = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, max_reap)
  for i = 1, #reaped do
    redis.call('ZADD', KEYS[4], now + lease, reaped[i])
    redis.call('HSET', KEYS[6], reaped[i], instance)
  end
  if acks > 0 or #reaped > 0 then remember(reaped) end
end
redis.call('ZADD', KEYS[7], now + tonumber(ARGV[3]), instance)
for _, name in ipairs(redis.call('ZRANGEBYSCORE', KEYS[16], '-inf', now, 'LIMIT', 0, 10)) do
  marker_clear(KEYS[15], KEYS[16], name)
  release_buffered(KEYS[17], KEYS[4], KEYS[6], KEYS[13], KEYS[15], KEYS[16], name, now)
end
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
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[12], '-inf', now - 3600000, 'LIMIT', 0, 10)) do
  redis.call('ZREM', KEYS[12], gone)  -- instances not seen for an hour: their ids never come back
end
local offset, take, sharing = 0, math.min(max_due, count), 1
if count > 0 then
  local live = redis.call('ZRANGEBYSCORE', KEYS[12], now - window, '+inf')
  local rank, n, found = 0, #live, false
  table.sort(live)
  for i = 1, n do
    if live[i] == instance then rank, found = i - 1, true end
  end
  if not found then  -- not counted by the others yet: this peek ranks it among them
    n = n + 1
    for i = 1, #live do
      if live[i] < instance then rank = i end
    end
  end
  sharing = n
  if n > 1 then
    local span = count
    local overdue = redis.call('ZCOUNT', KEYS[2], '-inf', now - window)
    if overdue > 0 then span = math.min(overdue, n * max_due) end
    offset = math.floor(rank * span / n)
    take = math.min(max_due, math.floor((rank + 1) * span / n) - offset)
  end
end
-- an empty part is a part done; a part handed out counts once it is claimed
if take <= 0 then redis.call('ZADD', KEYS[12], now, instance) end
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
out[#out + 1] = last_wake(KEYS[13])
out[#out + 1] = sharing
out[#out + 1] = redis.call('ZCOUNT', KEYS[14], now, '+inf')
return out
