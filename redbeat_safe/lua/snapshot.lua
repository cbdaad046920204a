-- Read the server time and the state and next tick of some entries.
-- KEYS: due, state
-- ARGV: names...
-- Returns: {now, state1, score1, state2, score2, ...} (false where absent)
local out = {now_ms()}
for i = 1, #ARGV do
  out[#out + 1] = redis.call('HGET', KEYS[2], ARGV[i])
  out[#out + 1] = redis.call('ZSCORE', KEYS[1], ARGV[i])
end
return out
