-- Forget published in-flight ticks, or (release) make them due for reaping now.
-- KEYS: inflight, flight
-- ARGV: mode ('ack' | 'release'), members...
for i = 2, #ARGV do
  if ARGV[1] == 'ack' then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
  else
    redis.call('ZADD', KEYS[1], 'XX', 0, ARGV[i])
  end
end
return #ARGV - 1
