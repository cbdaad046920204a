-- Events of runs, from a worker (redbeat_safe.runs), in order: received, started, a
-- heartbeat while it runs, or how it ended (succeeded, failed, retried, revoked,
-- expired). Records each in its entry's ledger and keeps the entry's running
-- marker (overlap policies): set when the run starts, refreshed while it runs,
-- cleared when it ends, which also releases a tick buffer_one held back.
-- KEYS: running, runlease, buffered, inflight, holder, wake, runstats, lastok,
--       state, ledgers, then runs:<entry> of each event, in order
-- ARGV: keep, retention ms, then 10 values per event: entry, tick, task id, event,
--       worker, pid, lease ms (started, heartbeat, retried, alive), exception type,
--       when it happened (the worker's clock, ms; '' = now by the server's), when
--       the run started (ms; '' unless a final event carries a start that was not
--       sent on its own)
--
-- A worker sends its events in batches from a thread (runs.py), many in one call
-- (a worker's hundreds of events a second cost one script run, not hundreds), so the
-- times in a record are the worker's own: a duration is measured on one clock. The
-- marker's deadlines are the server's.
-- Event 'alive' (no entry): the worker process keeps the ledger, until now + lease
-- (`ledgers`; beats apply overlap policies only while one does). Event 'skipped'
-- (from the API, resuming a paused entry): the ticks it missed while paused, as one
-- record at the first of them: worker = why, pid = how many, lease = the last one.
-- Returns: per event 1 recorded, 0 nothing to record (the entry was removed, or
--          the event came after a later one of the same run)
--
-- Atomic, one script. Run twice (a lost reply, a retry), the second run finds each
-- record already in its state and changes nothing: a state only moves forward,
-- counts are added on the move into a final state only, and the marker is only
-- set, refreshed or cleared for this very run (same tick and task id), so the
-- same events applied twice leave what they left once. Each event returns 0 the
-- second time: "already recorded". A record trimmed away meanwhile (a ledger keeps
-- the latest `keep` ticks) gives no such memory, so an event for a tick older
-- than all a full ledger keeps is applied only for the run the marker holds (whose end
-- clears it: a second run of it does not). A batch applies its events in order,
-- as the same events sent one by one would.
local now = now_ms()
local keep, retention = tonumber(ARGV[1]), tonumber(ARGV[2])

local function one(runs, name, tick, id, event, worker, pid, lease, exc, at, started_at)
  if event == 'alive' then
    redis.call('ZADD', KEYS[10], now + lease, worker)
    redis.call('ZREMRANGEBYSCORE', KEYS[10], '-inf', now - 86400000)
    return 1
  end
  if not is_int(tick, 0, MAX_TICK) then return 0 end

  local marker = marker_get(KEYS[1], name, now)
  local mine = marker ~= nil and marker.tick == tick and (marker.id == '' or marker.id == id)

  if event == 'heartbeat' then
    if mine and marker.state == 'running' then
      marker.deadline = now + lease
      marker_set(KEYS[1], KEYS[2], name, marker)
      return 1
    end
    return 0
  end

  if event == 'skipped' then
    if redis.call('HEXISTS', KEYS[9], name) == 0 then return 0 end
    local rec, old = run_get(runs, tick)
    if rec.state then return 0 end  -- recorded already (a second run of the same call)
    local count = tonumber(pid) or 0
    run_put(runs, tick, {state = 'skipped', reason = worker, count = count, ['to'] = lease}, old, keep, retention)
    add_count(KEYS[7], 'skipped.' .. worker .. ':' .. name, count)
    return 1
  end
  if redis.call('HEXISTS', KEYS[9], name) == 0 then  -- removed: no ledger comes back
    if mine then marker_clear(KEYS[1], KEYS[2], name) end
    return 0
  end

  local rec, old = run_get(runs, tick)
  if old == nil and not mine then
    -- an event with no record, for a tick older than every one a full ledger keeps, and
    -- not of the run the marker holds: its record was trimmed (the run outlasted `keep`
    -- ticks), so this is a second run of events already applied (the first end cleared
    -- the marker and counted the run), or a run of the entry that another has replaced.
    -- Left out, so a retry never counts a run twice or sets a marker again. The marker's
    -- own run always goes on: its start, a retry, its end, which clears the marker,
    -- releases a buffered tick and counts once.
    local oldest = redis.call('ZRANGE', runs, -keep, -keep, 'WITHSCORES')
    if oldest[2] and tonumber(oldest[2]) > tick then return 0 end
  end
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
      marker_set(KEYS[1], KEYS[2], name, {tick = tick, state = 'running', id = id, deadline = now + lease})
    end
  elseif event == 'retried' then
    rec.retries = (tonumber(rec.retries) or 0) + 1
    if exc ~= '' then rec.exc = exc end
    if mine then  -- it runs again later: the entry stays busy, as if queued
      marker_set(KEYS[1], KEYS[2], name, {tick = tick, state = 'queued', id = id, deadline = now + lease})
    end
  else  -- a final state
    rec.finished = at
    if rec.started then rec.ms = math.max(0, at - rec.started) end
    if exc ~= '' then rec.exc = exc end
    add_count(KEYS[7], event .. ':' .. name, 1)
    if event == 'succeeded' then redis.call('HSET', KEYS[8], name, now) end  -- the server's clock: the metric's age
    if mine then
      marker_clear(KEYS[1], KEYS[2], name)
      release_buffered(KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[1], KEYS[2], name, now)
    end
  end
  run_put(runs, tick, rec, old, keep, retention)
  return 1
end

local out = {}
for i = 0, (#ARGV - 2) / 10 - 1 do
  local a = 3 + i * 10
  out[#out + 1] = one(KEYS[11 + i], ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5],
                      tonumber(ARGV[a + 6]), ARGV[a + 7], tonumber(ARGV[a + 8] or '') or now, tonumber(ARGV[a + 9] or ''))
end
return out
