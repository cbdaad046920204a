-- (not a script) shared snippets are inlined by store.py at load time:
-- each script starts with these helpers.
-- "Now" is the Redis server's clock, for every instance alike. (The property
-- tests swap this one function for a clock they control; see store.py.)
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Numbers are doubles in Lua: integers are exact up to 2^53. A tick is at most
-- the last ms of year 9999 (schedules.MAX_TICK_MS), which Python can show.
local MAX_INT = 9007199254740991
local MAX_TICK = 253402300799999

local function is_int(v, low, high)
  return type(v) == 'number' and v == math.floor(v) and v >= low and v <= (high or MAX_INT)
end

-- An integer as JSON, exactly: cjson would round it to 14 significant digits.
local function int_json(v)
  return string.format('%.0f', v)
end

-- THE definition of a valid state record (docs/redis-layout.md, "The state
-- record"). Python never parses one: each script hands it the fields checked
-- here, so the two sides cannot read a record differently. Anything else
-- (planted, truncated, edited by hand) is reported so that entry alone can be
-- set aside. Returns the state, or nil and what is wrong with it.
local COUNT_FIELDS = {'ver', 'runs'}
local TIME_FIELDS = {'last', 'hold', 'trig', 'ctime', 'mtime'}
local TIME_LOW = {last = -1, hold = -1, trig = -1, ctime = 0, mtime = 0}

local function load_state(raw)
  if not raw then return nil, 'its state record is missing' end
  local ok, st = pcall(cjson.decode, raw)
  if not ok or type(st) ~= 'table' then return nil, 'its state record is not a JSON object' end
  for _, f in ipairs(COUNT_FIELDS) do
    if not is_int(st[f], 0) then return nil, 'its state field "' .. f .. '" is not a whole number >= 0' end
  end
  if st.trig == nil then st.trig = -1 end
  for _, f in ipairs(TIME_FIELDS) do
    local low = TIME_LOW[f]
    if not is_int(st[f], low, MAX_TICK) then
      return nil, 'its state field "' .. f .. '" is not a time in whole ms up to year 9999' .. (low < 0 and ' (or -1)' or '')
    end
  end
  if type(st.enabled) ~= 'boolean' or type(st.done) ~= 'boolean' then
    return nil, 'its state fields "enabled" and "done" must be true or false'
  end
  if type(st.dh) ~= 'string' or type(st.sh) ~= 'string' or #st.dh > 64 or #st.sh > 64 then
    return nil, 'its state fields "dh" and "sh" must be short strings'
  end
  if st.src ~= 'static' and st.src ~= 'api' then return nil, 'its state field "src" must be "static" or "api"' end
  return st
end

-- The writer of state records; integers written exactly.
local function encode_state(st)
  return '{"ver":' .. int_json(st.ver) .. ',"runs":' .. int_json(st.runs) .. ',"last":' .. int_json(st.last)
    .. ',"hold":' .. int_json(st.hold) .. ',"trig":' .. int_json(st.trig) .. ',"enabled":' .. tostring(st.enabled)
    .. ',"done":' .. tostring(st.done) .. ',"dh":' .. cjson.encode(st.dh) .. ',"sh":' .. cjson.encode(st.sh)
    .. ',"src":' .. cjson.encode(st.src) .. ',"ctime":' .. int_json(st.ctime) .. ',"mtime":' .. int_json(st.mtime) .. '}'
end

-- What Python reads of a state: the checked fields, in this order (store.State).
local function state_fields(st)
  return {st.ver, st.runs, st.last, st.hold, st.trig, st.enabled and 1 or 0, st.done and 1 or 0,
          st.dh, st.sh, st.src, st.ctime, st.mtime}
end

-- Whether a stored definition is the one the state was written with (the
-- state keeps the first 16 hex digits of its SHA-1): a definition deleted,
-- garbled or changed by hand does not match, and its entry is set aside.
local function def_matches(def, st)
  return def ~= false and def ~= nil and string.sub(redis.sha1hex(def), 1, 16) == st.dh
end

-- "<tick>:<entry>", the in-flight member of a claimed tick; nil for anything else.
local function split_member(m)
  local sep = string.find(m, ':', 1, true)
  if not sep or sep == 1 or sep == #m then return nil end
  local digits = string.sub(m, 1, sep - 1)
  if not string.match(digits, '^%d+$') or #digits > 15 then return nil end
  return tonumber(digits), string.sub(m, sep + 1)
end

-- Replies. Every script that writes takes KEYS[1], a key unique to this call.
-- A call that reaches Redis twice (its reply was lost, redis-py reconnected and
-- sent it again) finds there the answer of its first run and returns it,
-- writing nothing more. The record expires after ARGV[1] ms, far longer than
-- any client's retry of the same command.
local function replay()
  local r = redis.call('GET', KEYS[1])
  if r then return cmsgpack.unpack(r) end
  return nil
end

local function remember(reply)
  redis.call('SET', KEYS[1], cmsgpack.pack(reply), 'PX', tonumber(ARGV[1]))
  return reply
end

-- A history list of the wrong type (planted) is replaced, not an error that
-- would abort the acknowledgement of every other entry's ticks.
local function push_history(key, record, keep)
  local r = redis.pcall('LPUSH', key, record)
  if type(r) == 'table' and r.err then
    redis.call('DEL', key)
    redis.call('LPUSH', key, record)
  end
  redis.call('LTRIM', key, 0, keep - 1)
end

-- Wake the sleeping beats: something may now be due sooner than they planned
-- (an entry created, changed or resumed; a tick handed back at shutdown). The
-- key is a stream: each beat waits with XREAD for an id after the last one its
-- peek read, so a wake-up written while it was between calls, or reconnecting,
-- is still there when it asks (pub/sub would have lost it). Trimmed to the
-- latest 32. A wake key damaged by hand is replaced, and if even that is refused
-- (an ACL without XADD) the change goes on: beats then see it within their loop
-- interval, as without wake-ups.
local function wake(key)
  local r = redis.pcall('XADD', key, 'MAXLEN', '32', '*', 'w', '1')
  if type(r) == 'table' and r.err then
    redis.pcall('DEL', key)
    redis.pcall('XADD', key, 'MAXLEN', '32', '*', 'w', '1')
  end
end

-- The id of the latest wake-up ('' when there is none, or the key is damaged).
local function last_wake(key)
  local r = redis.pcall('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if type(r) == 'table' and not r.err and r[1] then return r[1][1] end
  return ''
end

-- Add n to a counter of the metrics' totals. A counter damaged by hand (not an
-- integer, or the key not a hash) starts again from n: a count must never abort
-- the acknowledgement or the claim it belongs to.
local function add_count(key, field, n)
  local r = redis.pcall('HINCRBY', key, field, n)
  if type(r) == 'table' and r.err then
    if type(redis.pcall('HSET', key, field, n)) == 'table' then  -- not a hash at all
      redis.call('DEL', key)
      redis.call('HSET', key, field, n)
    end
  end
end

-- The run ledger (redbeat_safe.runs): per entry a sorted set `{p}:runs:<entry>`,
-- score the nominal tick, member that tick's record (JSON). At most one record a
-- tick: an update reads it, merges the fields and writes it back. Kept to the
-- latest `keep` ticks, and the key expires `retention` ms after its last write.
-- A key of another type (planted) is replaced: the ledger never fails the write
-- it belongs to.
local function run_get(key, tick)
  local found = redis.pcall('ZRANGEBYSCORE', key, tick, tick)
  if type(found) ~= 'table' or found.err then
    redis.call('DEL', key)
    return {}, nil
  end
  for _, raw in ipairs(found) do
    local ok, rec = pcall(cjson.decode, raw)
    if ok and type(rec) == 'table' then return rec, raw end
    redis.call('ZREM', key, raw)
  end
  return {}, nil
end

local function run_put(key, tick, rec, old, keep, retention)
  if old then redis.call('ZREM', key, old) end
  -- the tick leads the record, exactly (cjson would round a 15-digit number): it makes
  -- each tick's member unique, and the score says the same
  rec.tick = nil
  local body = cjson.encode(rec)
  redis.call('ZADD', key, tick, '{"tick":' .. int_json(tick) .. (body == '{}' and '}' or ',' .. string.sub(body, 2)))
  redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
  redis.call('PEXPIRE', key, retention)
end

-- What a record's state may become: a final state never goes back, and a later
-- event of the same run never lets an earlier one overwrite it.
local RUN_ORDER = {queued = 1, received = 2, started = 3, retried = 3,
                   succeeded = 4, failed = 4, revoked = 4, expired = 4, skipped = 4}

-- The running marker of an entry (overlap policies): `{p}:running` entry -> JSON
-- {tick, state, id, deadline}; `{p}:runlease` entry -> deadline, so that expired markers
-- are found without reading them all. nil when there is none or it ran out.
local function marker_get(hkey, name, now)
  local raw = redis.call('HGET', hkey, name)
  if not raw then return nil end
  local ok, m = pcall(cjson.decode, raw)
  if not ok or type(m) ~= 'table' or type(m.deadline) ~= 'number' or type(m.tick) ~= 'number' then return nil end
  if m.deadline <= now then return nil end
  return m
end

local function marker_set(hkey, zkey, name, m)
  redis.call('HSET', hkey, name, '{"tick":' .. int_json(m.tick) .. ',"state":' .. cjson.encode(m.state) .. ',"id":'
    .. cjson.encode(m.id or '') .. ',"deadline":' .. int_json(m.deadline) .. '}')
  redis.call('ZADD', zkey, m.deadline, name)
end

local function marker_clear(hkey, zkey, name)
  redis.call('HDEL', hkey, name)
  redis.call('ZREM', zkey, name)
end

-- Hand the tick an entry's buffer policy held back to the reaper, due now: a beat
-- publishes it with its own task id (the definition it was claimed under is in
-- `flight`), and the entry counts as busy again until its run reports.
-- `buffered` holds "<tick>:<entry>|<ms a published tick counts as running>".
local function release_buffered(bkey, inflight, holder, wakekey, hkey, zkey, name, now)
  local raw = redis.call('HGET', bkey, name)
  if not raw then return false end
  redis.call('HDEL', bkey, name)
  local bar = string.find(raw, '|', 1, true)
  local member, hold = raw, 0
  if bar then member, hold = string.sub(raw, 1, bar - 1), tonumber(string.sub(raw, bar + 1)) or 0 end
  local tick = split_member(member)
  if not tick then return false end
  redis.call('ZADD', inflight, 0, member)
  redis.call('HSET', holder, member, 'buffer')
  marker_set(hkey, zkey, name, {tick = tick, state = 'queued', id = '', deadline = now + hold})
  wake(wakekey)
  return true
end

-- Acknowledge published in-flight ticks and append them to their entries'
-- bounded histories. acks: flat {member, task id, kind} triples starting at
-- ARGV[first]; history keys: KEYS[hfirst ...] in the same order; ix: where in
-- KEYS the in-flight, flight, holder, inststats, instances, state and counters keys are.
-- kind: 's' scheduled, 'r' re-published by the reaper, 't' triggered by hand,
-- 'x' not sent (the task refused it). A removed entry gets no history back,
-- and only registered instances are counted, so neither record outlives its owner.
-- Every acknowledgement of a tick still in flight also counts its kind in the
-- counters hash (cluster-wide totals for the metrics): a second run of the call
-- replays, and the same acknowledgement sent again in a new call (after an error
-- on the way back) finds the tick gone and counts nothing.
local function ack_all(ix, instance, now, first, count, hfirst, keep)
  local sent = 0
  for i = 0, count - 1 do
    local m, id, kind = ARGV[first + i * 3], ARGV[first + i * 3 + 1], ARGV[first + i * 3 + 2]
    local held = redis.call('ZREM', KEYS[ix.inflight], m)
    redis.call('HDEL', KEYS[ix.flight], m)
    redis.call('HDEL', KEYS[ix.holder], m)
    local tick, name = split_member(m)
    if tick and redis.call('HEXISTS', KEYS[ix.state], name) == 1 then
      push_history(KEYS[hfirst + i], '{"tick":' .. int_json(tick) .. ',"id":' .. cjson.encode(id) .. ',"kind":'
        .. cjson.encode(kind) .. ',"by":' .. cjson.encode(instance) .. ',"at":' .. int_json(now) .. '}', keep)
    end
    if kind ~= 'x' then sent = sent + 1 end
    if held == 1 then add_count(KEYS[ix.counters], kind, 1) end
  end
  if sent > 0 and instance ~= '' and redis.call('ZSCORE', KEYS[ix.instances], instance) then
    redis.call('HINCRBY', KEYS[ix.stats], instance, sent)
  end
end
