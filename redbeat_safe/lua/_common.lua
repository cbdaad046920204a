-- (not a script) shared snippets are inlined by store.py at load time:
-- each script starts with these helpers.
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
