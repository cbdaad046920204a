-- Read the server time and, for each name, everything needed to decide a
-- write or to show the entry: its state (checked by load_state), its next
-- tick, the hash of its stored definition (or the definition itself) and why
-- it was set aside, if it was. Read only, so safe to run twice.
-- KEYS: due, state, defs, aside
-- ARGV: 'hash' | 'full' | 'summary', names...
-- Returns: {now, then per name {state fields | what is wrong with the state |
--           false (no state), next tick | false, definition hash | definition |
--           false (none), set-aside record | false}}
--   'summary' (metrics over every entry, 5x less to send and parse): per name
--   the three values code, next tick | false, last tick | false, flat; code is
--   false (nothing stored), 'd' damaged, 'p' paused, 'f' finished or 'e' enabled,
--   decided as store.Stored.problem decides it (a test holds the two together).
local out = {now_ms()}
local full = ARGV[1] == 'full'
if ARGV[1] == 'summary' then
  -- batched reads (one command per key for all the names), then the same checks per name
  local names = {}
  for i = 2, #ARGV do names[#names + 1] = ARGV[i] end
  if #names == 0 then return out end
  local raws = redis.call('HMGET', KEYS[2], unpack(names))
  local defs = redis.call('HMGET', KEYS[3], unpack(names))
  local scores = redis.call('ZMSCORE', KEYS[1], unpack(names))
  for i, name in ipairs(names) do
    local raw, def, score = raws[i], defs[i], scores[i]
    local st = load_state(raw)
    local code = false
    if st then
      if not def_matches(def, st) then code = 'd'  -- missing or not the one the state names
      elseif score and not is_int(tonumber(score), 0, MAX_TICK) then code = 'd'
      elseif st.enabled and not st.done and not score then code = 'd'  -- set aside by a beat
      elseif not st.enabled then code = 'p'
      elseif st.done or not score then code = 'f'
      else code = 'e' end
    elseif raw or def or score or redis.call('HEXISTS', KEYS[4], name) == 1 then
      code = 'd'
    end
    out[#out + 1] = code
    out[#out + 1] = score or false
    out[#out + 1] = st and st.last >= 0 and int_json(st.last) or false
  end
  return out
end
for i = 2, #ARGV do
  local name = ARGV[i]
  local raw = redis.call('HGET', KEYS[2], name)
  local st, problem = load_state(raw)
  local def = redis.call('HGET', KEYS[3], name)
  local shown = def
  if def and not full then shown = string.sub(redis.sha1hex(def), 1, 16) end
  local state = false
  if st then state = state_fields(st) elseif raw then state = problem end
  out[#out + 1] = {state, redis.call('ZSCORE', KEYS[1], name), shown, redis.call('HGET', KEYS[4], name)}
end
return out
