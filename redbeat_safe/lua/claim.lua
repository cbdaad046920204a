-- Claim due ticks: a compare-and-set on each entry's next tick and version
-- that advances the next tick in the same step and records the claimed ticks
-- in flight under a lease, with a copy of the definition they were claimed under.
-- KEYS: due, state, defs, inflight, flight
-- ARGV: lease ms, count, then per entry: name, expected next tick, expected
--       version ('' when its state is unreadable), new next tick ('' = the
--       entry ends; 'park' = set a corrupt entry aside), tick count k, k ticks
-- Returns: {now, 1|0 per entry}
local now = now_ms()
local lease = tonumber(ARGV[1])
local out = {now}
local b = 3
for _ = 1, tonumber(ARGV[2]) do
  local name, expected, ver, nxt, k = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], tonumber(ARGV[b + 4])
  local first = b + 5
  b = first + k
  local score = redis.call('ZSCORE', KEYS[1], name)
  local won = 0
  if score and score == expected and tonumber(score) <= now then
    local st = load_state(redis.call('HGET', KEYS[2], name))
    local same = (st == nil and ver == '') or (st ~= nil and tostring(st.ver) == ver)
    if same and nxt == 'park' then
      redis.call('ZREM', KEYS[1], name)
      won = 1
    elseif same and st ~= nil then
      if k > 0 then
        if nxt ~= '' and tonumber(nxt) <= tonumber(ARGV[b - 1]) then
          return redis.error_reply('next tick ' .. nxt .. ' is not after the claimed ticks of ' .. name)
        end
        local def = redis.call('HGET', KEYS[3], name)
        for j = first, b - 1 do
          local member = ARGV[j] .. ':' .. name
          redis.call('ZADD', KEYS[4], now + lease, member)
          redis.call('HSET', KEYS[5], member, def)
        end
        st.runs = st.runs + k
        st.last = tonumber(ARGV[b - 1])
      end
      if nxt == '' then
        redis.call('ZREM', KEYS[1], name)
        st.done = true
      else
        redis.call('ZADD', KEYS[1], nxt, name)
      end
      redis.call('HSET', KEYS[2], name, cjson.encode(st))
      won = 1
    end
  end
  out[#out + 1] = won
end
return out
