-- Claim an extra, unscheduled run of an entry ("trigger"), recorded in flight
-- like any claimed tick (held by the caller) so that a crash before publishing
-- cannot lose it. Its tick is "now", moved on until it is after the entry's
-- previous trigger and none of its own schedule's ticks (nor one in flight),
-- so two triggers never share a task id, even across a clock step back.
-- KEYS: request record, due, state, defs, inflight, flight, holder
-- ARGV: record ttl ms, caller id, name, expected version, grid step ms,
--       grid anchor ms (used only when the entry has no next tick: paused),
--       lease ms, mode ('claim' | 'cancel')
-- Returns ('claim'): {tick, 'claimed'} publish it now, then acknowledge it;
--   {tick, 'sent'} this request was published already; {tick, 'taken'} its
--   lease ran out and a beat re-leased it, which publishes it; {false, why}
--   nothing claimed ('changed': read the entry again; else what is wrong).
-- ('cancel'): the publish failed; the run is withdrawn (if the caller still
--   holds it) but the request keeps its tick, so a retry of the same request
--   publishes it under the same id.
--
-- KEYS[1] is per request (the caller's request id): a repeat of the request,
-- whether redis-py resending it after a lost reply or the caller retrying after
-- an exception, returns the same tick and never claims a second run.
local now = now_ms()
local caller, name, lease = ARGV[2], ARGV[3], tonumber(ARGV[7])
local rec = redis.call('GET', KEYS[1])
local request = rec and cmsgpack.unpack(rec) or nil

local function hold(member, def)
  redis.call('ZADD', KEYS[5], now + lease, member)
  if def then redis.call('HSET', KEYS[6], member, def) end
  redis.call('HSET', KEYS[7], member, caller)
end

if ARGV[8] == 'cancel' then
  if request then
    local member = int_json(request[1]) .. ':' .. name
    -- withdrawn only if still the caller's: a beat that re-leased it after the
    -- lease ran out publishes it, and a retry must then find it sent or taken
    if redis.call('HGET', KEYS[7], member) == caller then
      redis.call('ZREM', KEYS[5], member)
      redis.call('HDEL', KEYS[6], member)
      redis.call('HDEL', KEYS[7], member)
      redis.call('SET', KEYS[1], cmsgpack.pack({request[1], 1}), 'KEEPTTL')
    end
  end
  return 0
end

if request then
  local tick = request[1]
  local member = int_json(tick) .. ':' .. name
  local deadline = redis.call('ZSCORE', KEYS[5], member)
  if deadline then
    if redis.call('HGET', KEYS[7], member) == caller or tonumber(deadline) <= now then
      hold(member, false)
      return {tick, 'claimed'}
    end
    return {tick, 'taken'}
  end
  if request[2] == 1 then  -- withdrawn after a failed publish: the retry sends the same tick
    local def = redis.call('HGET', KEYS[4], name)
    if not def then return {false, 'its definition is missing'} end
    hold(member, def)
    redis.call('SET', KEYS[1], cmsgpack.pack({tick, 0}), 'KEEPTTL')
    return {tick, 'claimed'}
  end
  return {tick, 'sent'}
end

local st, problem = load_state(redis.call('HGET', KEYS[3], name))
if not st then return {false, problem} end
if st.ver ~= tonumber(ARGV[4]) then return {false, 'changed'} end
local def = redis.call('HGET', KEYS[4], name)
if not def_matches(def, st) then return {false, 'its definition is missing or does not match its state'} end
local step, anchor = tonumber(ARGV[5]), tonumber(ARGV[6])
-- The entry's next tick is on its grid (an every's anchor + k * step; a pattern's
-- whole seconds): taken from the due score here rather than trusted from the
-- caller, whose anchor could be another grid and land on a scheduled tick.
local due = redis.call('ZSCORE', KEYS[2], name)
if due then anchor = tonumber(due) or anchor end  -- a score that is not a number: the caller's
local tick = math.max(now, st.trig + 1)
while (tick - anchor) % step == 0 or tick == st.last
    or redis.call('ZSCORE', KEYS[5], int_json(tick) .. ':' .. name) do
  tick = tick + 1
end
hold(int_json(tick) .. ':' .. name, def)
st.trig = tick
redis.call('HSET', KEYS[3], name, encode_state(st))
redis.call('SET', KEYS[1], cmsgpack.pack({tick, 0}), 'PX', tonumber(ARGV[1]))
return {tick, 'claimed'}
