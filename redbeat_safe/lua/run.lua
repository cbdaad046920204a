-- One event of a run, from a worker (redbeat_safe.runs): received, started, a
-- heartbeat while it runs, or how it ended (succeeded, failed, retried, revoked,
-- expired). Records it in the entry's ledger and keeps the entry's running
-- marker (overlap policies): set when the run starts, refreshed while it runs,
-- cleared when it ends, which also releases a tick buffer_one held back.
-- KEYS: runs:<entry>, running, runlease, buffered, inflight, holder, wake,
--       runstats, lastok, state, ledgers
-- ARGV: entry, tick, task id, event, worker, pid, lease ms (started, heartbeat,
--       retried, alive), exception type, keep, retention ms, when it happened (the
--       worker's clock, ms; '' = now by the server's), when the run started (ms; ''
--       unless a final event carries a start that was not sent on its own)
--
-- A worker sends its events in batches from a thread (runs.py), so the times in a
-- record are the worker's own: a duration is measured on one clock. The marker's
-- deadlines are the server's.
-- Event 'alive' (no entry): the worker process keeps the ledger, until now + lease
-- (`ledgers`; beats apply overlap policies only while one does). Event 'skipped'
-- (from the API, resuming a paused entry): the ticks it missed while paused, as one
-- record at the first of them: worker = why, pid = how many, lease = the last one.
-- Returns: 1 recorded, 0 nothing to record (the entry was removed, or the event
--          came after a later one of the same run)
--
-- Atomic, one script. Run twice (a lost reply, a retry), the second run finds the
-- record already in that state and changes nothing: a state only moves forward,
-- counts are added on the move into a final state only, and the marker is only
-- set, refreshed or cleared for this very run (same tick and task id), so the
-- same event applied twice leaves what it left once. It returns 0 the second
-- time: "already recorded".
local now = now_ms()
local name, tick, id, event = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local worker, pid, lease, exc = ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
local keep, retention = tonumber(ARGV[9]), tonumber(ARGV[10])
local at, started_at = tonumber(ARGV[11] or '') or now, tonumber(ARGV[12] or '')
if event == 'alive' then
  redis.call('ZADD', KEYS[11], now + lease, worker)
  redis.call('ZREMRANGEBYSCORE', KEYS[11], '-inf', now - 86400000)
  return 1
end
if not is_int(tick, 0, MAX_TICK) then return 0 end

local marker = marker_get(KEYS[2], name, now)
local mine = marker ~= nil and marker.tick == tick and (marker.id == '' or marker.id == id)

if event == 'heartbeat' then
  if mine and marker.state == 'running' then
    marker.deadline = now + lease
    marker_set(KEYS[2], KEYS[3], name, marker)
    return 1
  end
  return 0
end

if event == 'skipped' then
  if redis.call('HEXISTS', KEYS[10], name) == 0 then return 0 end
  local rec, old = run_get(KEYS[1], tick)
  if rec.state then return 0 end  -- recorded already (a second run of the same call)
  local count = tonumber(pid) or 0
  run_put(KEYS[1], tick, {state = 'skipped', reason = worker, count = count, ['to'] = lease}, old, keep, retention)
  add_count(KEYS[8], 'skipped.' .. worker .. ':' .. name, count)
  return 1
end
if redis.call('HEXISTS', KEYS[10], name) == 0 then  -- removed: no ledger comes back
  if mine then marker_clear(KEYS[2], KEYS[3], name) end
  return 0
end

local rec, old = run_get(KEYS[1], tick)
local was = RUN_ORDER[rec.state or ''] or 0
local want = RUN_ORDER[event] or 0
if want == 0 or (was >= want and not (event == 'started' and rec.state == 'retried')) then
  return 0
end
rec.state, rec.id = event, id
if worker ~= '' then rec.worker, rec.pid = worker, tonumber(pid) end
if started_at and not rec.started then rec.started = started_at end
if event == 'received' then
  rec.received = at
elseif event == 'started' then
  rec.started = at
  -- a newer tick's marker (replace published it) is never overwritten by an older run
  if marker == nil or marker.tick <= tick then
    marker_set(KEYS[2], KEYS[3], name, {tick = tick, state = 'running', id = id, deadline = now + lease})
  end
elseif event == 'retried' then
  rec.retries = (tonumber(rec.retries) or 0) + 1
  if exc ~= '' then rec.exc = exc end
  if mine then  -- it runs again later: the entry stays busy, as if queued
    marker_set(KEYS[2], KEYS[3], name, {tick = tick, state = 'queued', id = id, deadline = now + lease})
  end
else  -- a final state
  rec.finished = at
  if rec.started then rec.ms = math.max(0, at - rec.started) end
  if exc ~= '' then rec.exc = exc end
  add_count(KEYS[8], event .. ':' .. name, 1)
  if event == 'succeeded' then redis.call('HSET', KEYS[9], name, now) end  -- the server's clock: the metric's age
  if mine then
    marker_clear(KEYS[2], KEYS[3], name)
    release_buffered(KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[2], KEYS[3], name, now)
  end
end
run_put(KEYS[1], tick, rec, old, keep, retention)
return 1
