-- Create or change entries, each as a compare-and-set on its definition version.
-- KEYS: reply, due, defs, state, static, aside, wake, finished
-- ARGV: reply ttl ms, count, then per entry 10 values:
--   name, expected version ('-' = must not exist, '!' = its state is not a
--   valid record), definition JSON, definition hash, schedule hash, source
--   ('static' | 'api'), next ('keep' = leave the current next tick alone, '' =
--   the entry has no future tick, else ms), enabled ('1' | '0'), runs and last
--   tick to start from when the entry is created ('' = 0 and none; used by
--   import to keep a history's phase)
-- Returns one status per entry: 'ok', 'conflict' (re-read and try again) or
-- 'invalid' (the next tick given is not a tick; nothing written).
--
-- A write also repairs: it replaces a damaged state or definition, a next tick
-- that is not whole ms, and clears the entry's set-aside reason. A write that
-- gives an entry a next tick wakes the sleeping beats (`wake` in _common.lua),
-- once per call: they look again at once instead of at their next loop.
-- Run twice (a lost reply), the second run returns the first run's statuses
-- (a plain re-run would answer 'conflict' for what the first run wrote).
local r = replay()
if r then return r end
local now = now_ms()
local out = {}
local woken = false
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local b = 3 + i * 10
  local name, expected, def, dh, sh, src, nxt, enabled =
    ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], ARGV[b + 6], ARGV[b + 7] == '1'
  local raw = redis.call('HGET', KEYS[4], name)
  local st = load_state(raw)
  local ok
  if expected == '-' then
    ok = (raw == false)
  elseif expected == '!' then  -- overwrite a record that is not valid state
    ok = (raw ~= false and st == nil)
  else
    ok = (st ~= nil and st.ver == tonumber(expected))
  end
  local invalid = false
  local score = redis.call('ZSCORE', KEYS[2], name)
  if score and not is_int(tonumber(score), 0, MAX_TICK) then score = false end  -- damaged: replaced below
  if ok and st == nil then
    redis.call('ZREM', KEYS[2], name)
    score = false
    local runs, last = tonumber(ARGV[b + 8]) or 0, tonumber(ARGV[b + 9]) or -1
    if not is_int(runs, 0) or not is_int(last, -1, MAX_TICK) then runs, last = 0, -1 end
    st = {ver = 0, runs = runs, last = last, hold = -1, trig = -1, done = false, ctime = now}
  end
  if ok then
    -- what the next tick would be, before the enabled flag is applied
    local target
    if nxt == 'keep' then
      if score then target = tonumber(score) elseif st.hold >= 0 then target = st.hold else target = nil end
      if st.done then
        target = nil
      elseif target == nil then
        -- enabled, not finished, and no next tick: a beat set it aside since the
        -- caller read it; keeping "nothing" would finish it, so re-read and repair
        ok = false
      end
    elseif nxt == '' then
      target = nil
    elseif not is_int(tonumber(nxt), 0, MAX_TICK) then
      ok, invalid = false, true  -- not a tick: the caller's bug, refused (never a script error)
    else
      target = tonumber(nxt)
      -- never move back onto or before a tick that was already claimed or
      -- triggered (the caller computes targets after both; a claim or trigger
      -- in between is a conflict)
      if target <= st.last or target <= st.trig then ok = false end
    end
    if ok then
      st.ver = st.ver + 1
      st.dh, st.sh, st.src, st.mtime, st.enabled = dh, sh, src, now, enabled
      st.done = (target == nil)
      if target ~= nil and enabled then
        redis.call('ZADD', KEYS[2], target, name)
        st.hold = -1
        woken = true
      else
        redis.call('ZREM', KEYS[2], name)
        st.hold = target or -1
      end
      redis.call('HSET', KEYS[3], name, def)
      redis.call('HSET', KEYS[4], name, encode_state(st))
      if st.done then redis.call('ZADD', KEYS[8], 'NX', now, name) else redis.call('ZREM', KEYS[8], name) end
      redis.call('HDEL', KEYS[6], name)
      if src == 'static' then redis.call('SADD', KEYS[5], name) else redis.call('SREM', KEYS[5], name) end
    end
  end
  out[#out + 1] = ok and 'ok' or (invalid and 'invalid' or 'conflict')
end
if woken then wake(KEYS[7]) end
return remember(out)
