-- Read the server time and, for each name, everything needed to decide a
-- write or to show the entry: its state (checked by load_state), its next
-- tick, the hash of its stored definition (or the definition itself) and why
-- it was set aside, if it was. Read only, so safe to run twice.
-- KEYS: due, state, defs, aside
-- ARGV: 'hash' | 'full', names...
-- Returns: {now, then per name {state fields | what is wrong with the state |
--           false (no state), next tick | false, definition hash | definition |
--           false (none), set-aside record | false}}
local out = {now_ms()}
local full = ARGV[1] == 'full'
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
