-- (not a script) shared snippets are inlined by store.py at load time:
-- each script starts with these helpers.
-- "Now" is the Redis server's clock, for every instance alike. (The property
-- tests swap this one function for a clock they control; see store.py.)
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A state record is JSON written by these scripts; anything else (planted or
-- truncated by hand) decodes to nil so the caller can skip that entry alone.
local function load_state(raw)
  if not raw then return nil end
  local ok, st = pcall(cjson.decode, raw)
  if not ok or type(st) ~= 'table' or type(st.ver) ~= 'number' then return nil end
  return st
end

-- Acknowledge published in-flight ticks and append them to their entry's
-- bounded history. acks: flat {member, task id, kind} triples starting at
-- ARGV[first]; history keys: KEYS[hfirst ...] in the same order.
-- kind: 's' scheduled, 'r' re-published by the reaper, 't' triggered by hand.
local function ack_all(inflight, flight, stats, instance, now, first, count, hfirst, keep)
  for i = 0, count - 1 do
    local m = ARGV[first + i * 3]
    redis.call('ZREM', inflight, m)
    redis.call('HDEL', flight, m)
    local sep = string.find(m, ':', 1, true)
    local record = cjson.encode({tick = tonumber(string.sub(m, 1, sep - 1)), id = ARGV[first + i * 3 + 1],
      kind = ARGV[first + i * 3 + 2], by = instance, at = now})
    redis.call('LPUSH', KEYS[hfirst + i], record)
    redis.call('LTRIM', KEYS[hfirst + i], 0, keep - 1)
  end
  if count > 0 and instance ~= '' then redis.call('HINCRBY', stats, instance, count) end
end
