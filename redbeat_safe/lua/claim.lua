-- Claim due ticks: a compare-and-set on each entry's next tick and version
-- that advances the next tick in the same step and records the claimed ticks
-- in flight under a lease (held by this instance), with a copy of the
-- definition they were claimed under.
-- KEYS: reply, due, state, defs, inflight, flight, holder, aside, counters, seen
-- ARGV: reply ttl ms, instance id, lease ms, count, then per entry: name,
--       expected next tick (exactly as peek returned it), expected version
--       (-1 when the caller could not read the state), mode, reason, skipped
--       (missed ticks the misfire policy leaves out, counted in `counters` under
--       'skip' when the claim succeeds), k, k ticks.
--       mode: the new next tick in ms; '' = the entry ends; 'check' = the caller
--       could not read the entry: set it aside if it is damaged; 'park' = the
--       caller cannot follow the entry (its schedule): set it aside for `reason`.
-- Returns: {now, per entry: 1 claimed | 0 changed meanwhile (re-read) |
--           -1 not due by the server clock | '<what is wrong>' set aside}
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

local b = 5
for _ = 1, tonumber(ARGV[4]) do
  local name, expected, ver, mode, reason = ARGV[b], ARGV[b + 1], tonumber(ARGV[b + 2]), ARGV[b + 3], ARGV[b + 4]
  local skipped, k = tonumber(ARGV[b + 5]), tonumber(ARGV[b + 6])
  local first = b + 7
  b = first + k
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
        for j = first, b - 1 do
          local member = int_json(tonumber(ARGV[j])) .. ':' .. name
          redis.call('ZADD', KEYS[5], now + lease, member)
          redis.call('HSET', KEYS[6], member, def)
          redis.call('HSET', KEYS[7], member, instance)
        end
        if k > 0 then
          st.runs = st.runs + k
          st.last = tonumber(ARGV[b - 1])
        end
        if mode == '' then
          redis.call('ZREM', KEYS[2], name)
          st.done = true
        else
          redis.call('ZADD', KEYS[2], mode, name)
        end
        redis.call('HSET', KEYS[3], name, encode_state(st))
        if skipped and skipped > 0 then add_count(KEYS[9], 'skip', skipped) end
        code = 1
      end
    end
  end
  out[#out + 1] = code
end
if instance ~= '' then redis.call('ZADD', KEYS[10], now, instance) end
return remember(out)
