-- Runs an Argo CD health check over test cases the way Argo CD's own tests
-- do: `obj` is the object, the script returns {status, message}, and both
-- must equal the expected health status.
-- Usage: lua run.lua health.lua cases.lua [--print]
local healthPath, casesPath, mode = arg[1], arg[2], arg[3]
if healthPath == nil or casesPath == nil then
  io.stderr:write("usage: lua run.lua health.lua cases.lua [--print]\n")
  os.exit(2)
end

local file = assert(io.open(healthPath, "rb"))
local source = file:read("*a")
file:close()
local cases = dofile(casesPath)

-- The script sees `obj` and the standard library, nothing of this runner.
local function evaluate(obj)
  local env = setmetatable({ obj = obj }, { __index = _G })
  local chunk, err
  if setfenv ~= nil then
    chunk, err = loadstring(source, "@" .. healthPath)
    if chunk ~= nil then
      setfenv(chunk, env)
    end
  else
    chunk, err = load(source, "@" .. healthPath, "t", env)
  end
  if chunk == nil then
    error(err)
  end
  return chunk()
end

local failures = 0
for _, case in ipairs(cases) do
  local ok, hs = pcall(evaluate, case.obj)
  if not ok then
    failures = failures + 1
    print(string.format("FAIL %s: the script failed: %s", case.inputPath, tostring(hs)))
  elseif type(hs) ~= "table" then
    failures = failures + 1
    print(string.format("FAIL %s: the script returned %s, not a table", case.inputPath, type(hs)))
  elseif mode == "--print" then
    print(string.format("%s\t%s\t%s", case.inputPath, tostring(hs.status), tostring(hs.message)))
  elseif hs.status ~= case.expected.status or hs.message ~= case.expected.message then
    failures = failures + 1
    print(string.format("FAIL %s\n  want %s: %s\n  got  %s: %s", case.inputPath,
      tostring(case.expected.status), tostring(case.expected.message), tostring(hs.status), tostring(hs.message)))
  else
    print(string.format("ok   %s: %s", case.inputPath, hs.status))
  end
end
print(string.format("%s: %d cases, %d failed", _VERSION, #cases, failures))
if failures > 0 then
  os.exit(1)
end
