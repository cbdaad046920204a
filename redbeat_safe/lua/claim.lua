-- Claim due ticks: a compare-and-set on each entry's next tick and version
-- that advances the next tick in the same step and records the claimed ticks
-- in flight under a lease (held by this instance), with a copy of the
-- definition they were claimed under.
-- KEYS: reply, due, state, defs, inflight, flight, holder, aside, counters, seen,
--       running, runlease, buffered, runstats, finished, then one run-ledger key
--       (`{p}:runs:<entry>`) per entry, in the same order
-- ARGV: reply ttl ms, instance id, lease ms, count, ledger length, ledger ttl ms,
--       then per entry: name, expected next tick (exactly as peek returned it),
--       expected version (-1 when the caller could not read the state), mode,
--       reason, skipped (missed ticks the misfire policy leaves out, counted in
--       `counters` under 'skip' when the claim succeeds), overlap policy ('' |
--       'skip' | 'buffer' | 'replace'), how long a published tick counts as
--       running before a worker reports it (ms), why the skipped ticks were left
--       out ('' when none: 'coalesced', 'missed', ...), the first and the last of
--       them, k, k ticks.
--       mode: the new next tick in ms; '' = the entry ends; 'check' = the caller
--       could not read the entry: set it aside if it is damaged; 'park' = the
--       caller cannot follow the entry (its schedule): set it aside for `reason`.
-- Returns: {now, per entry: 1 claimed: publish every planned tick | 0 changed
--           meanwhile (re-read) | -1 not due by the server clock | '<what is wrong>'
--           set aside | {2, revoke tick, revoke task id, tick, ...} claimed under
--           an overlap policy: publish only these ticks, and revoke the run of the
--           revoke tick first unless it is -1}
--
-- Overlap policies are decided here, atomically with the claim, on the entry's
-- running marker (`running`/`runlease`: set here when a tick is published, by the
-- worker's ledger when the run starts, refreshed while it runs, cleared when it
-- ends; see _common.lua): so two beats can never both let a tick through. skip:
-- while a run is queued or running, due ticks are consumed and recorded as
-- skipped (overlap). buffer: the first such tick is kept (`buffered`, its
-- definition in `flight`) and released to the reaper when the run ends; the rest
-- are skipped. replace: the newest tick is published and the running one revoked.
-- A marker whose lease ran out counts as no run.
--
-- A claim by an instance marks it as one that does its part of the due list
-- (`seen`, see peek.lua), whatever each entry's outcome.
--
-- No record makes this script fail: a damaged entry is set aside (removed from
-- due, the reason kept in `aside`) and the rest of the batch is claimed.
-- Run twice (a lost reply), the second run returns the first run's answer.
local r = replay()
if r then return r end
local now = now_ms()
local instance, lease = ARGV[2], tonumber(ARGV[3])
local keep, retention = tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {now}

local function aside(name, why)
  redis.call('ZREM', KEYS[2], name)
  redis.call('HSET', KEYS[8], name, cjson.encode({problem = why, at = now, by = instance}))
  return why
end

-- the planned ticks: ascending, after the last claimed one, then the next tick after them all
local function valid_plan(st, score, first, last, nxt)
  local prev = math.max(st.last, score - 1)
  for j = first, last do
    local t = tonumber(ARGV[j])
    if not is_int(t, 0) or t <= prev then return false end
    prev = t
  end
  if nxt ~= '' then
    local n = tonumber(nxt)
    if not is_int(n, 0) or n <= prev or n <= score then return false end
  end
  return true
end

local function in_flight(name, tick, def)
  local member = int_json(tick) .. ':' .. name
  redis.call('ZADD', KEYS[5], now + lease, member)
  redis.call('HSET', KEYS[6], member, def)
  redis.call('HSET', KEYS[7], member, instance)
end

local b = 7
for i = 1, tonumber(ARGV[4]) do
  local name, expected, ver, mode, reason = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], ARGV[b + 4]
  local skipped, policy, hold = tonumber(ARGV[b + 5]), ARGV[b + 6], tonumber(ARGV[b + 7]) or 0
  local why, from, to = ARGV[b + 8], tonumber(ARGV[b + 9]), tonumber(ARGV[b + 10])
  local k = tonumber(ARGV[b + 11])
  local first = b + 12
  b = first + k
  local runs = KEYS[15 + i]
  local score = redis.call('ZSCORE', KEYS[2], name)
  local code = 0
  if score and score == expected then
    local s = tonumber(score)
    local st, problem = load_state(redis.call('HGET', KEYS[3], name))
    if not is_int(s, 0, MAX_TICK) then
      code = aside(name, 'its next tick ' .. score .. ' is not whole ms up to year 9999')
    elseif s > now then
      code = -1
    elseif not st then
      code = aside(name, problem)
    elseif st.ver == ver or mode == 'check' then
      local def = redis.call('HGET', KEYS[4], name)
      if not def then
        code = aside(name, 'its definition is missing')
      elseif not def_matches(def, st) then
        code = aside(name, 'its definition does not match its state (edited by hand?)')
      elseif st.ver ~= ver then
        code = 0  -- 'check': it is not damaged, it changed; the caller reads it again
      elseif mode == 'check' then
        code = 0
      elseif mode == 'park' then
        code = aside(name, reason)
      elseif st.last >= s then
        code = aside(name, 'its last tick is not before its next tick (edited by hand?)')
      elseif not valid_plan(st, s, first, b - 1, mode) then
        code = aside(name, 'the ticks planned for it do not follow its last tick (a bug; please report it)')
      else
        local ticks = {}
        for j = first, b - 1 do ticks[#ticks + 1] = tonumber(ARGV[j]) end
        local sent = ticks
        if policy ~= '' and #ticks > 0 then
          local busy = marker_get(KEYS[11], name, now)
          local left, buffered, revoke = {}, nil, nil
          if policy == 'replace' then
            sent = {ticks[#ticks]}
            for j = 1, #ticks - 1 do left[#left + 1] = ticks[j] end
            revoke = busy
          elseif busy then
            sent = {}
            for j = 1, #ticks do left[#left + 1] = ticks[j] end
          else
            sent = {ticks[1]}
            for j = 2, #ticks do left[#left + 1] = ticks[j] end
          end
          if policy == 'buffer' and #left > 0 and redis.call('HEXISTS', KEYS[13], name) == 0 then
            buffered = table.remove(left, 1)
            local member = int_json(buffered) .. ':' .. name
            redis.call('HSET', KEYS[6], member, def)
            redis.call('HSET', KEYS[13], name, member .. '|' .. int_json(hold))
          end
          for _, t in ipairs(left) do
            run_put(runs, t, {state = 'skipped', reason = policy == 'replace' and 'replaced' or 'overlap'}, nil, keep, retention)
          end
          if #left > 0 then add_count(KEYS[14], 'skipped.' .. (policy == 'replace' and 'replaced' or 'overlap') .. ':' .. name, #left) end
          if buffered then run_put(runs, buffered, {state = 'queued', reason = 'buffered'}, nil, keep, retention) end
          if #sent > 0 then
            marker_set(KEYS[11], KEYS[12], name, {tick = sent[1], state = 'queued', id = '', deadline = now + hold})
          end
          local reply = {2, revoke and revoke.tick or -1, revoke and revoke.id or ''}
          for _, t in ipairs(sent) do reply[#reply + 1] = t end
          code = reply
          st.runs = st.runs + #sent + (buffered and 1 or 0)
        else
          code = 1
          st.runs = st.runs + k
        end
        for _, t in ipairs(sent) do in_flight(name, t, def) end
        if k > 0 then st.last = ticks[#ticks] end
        if mode == '' then
          redis.call('ZREM', KEYS[2], name)
          st.done = true
          redis.call('ZADD', KEYS[15], now, name)  -- finished: removed after the retention (sweep.lua)
        else
          redis.call('ZADD', KEYS[2], mode, name)
        end
        redis.call('HSET', KEYS[3], name, encode_state(st))
        if skipped and skipped > 0 then
          add_count(KEYS[9], 'skip', skipped)
          if why ~= '' and is_int(from, 0, MAX_TICK) then
            run_put(runs, from, {state = 'skipped', reason = why, count = skipped, ['to'] = to}, nil, keep, retention)
            add_count(KEYS[14], 'skipped.' .. why .. ':' .. name, skipped)
          end
        end
      end
    end
  end
  out[#out + 1] = code
end
if instance ~= '' then redis.call('ZADD', KEYS[10], now, instance) end
return remember(out)
