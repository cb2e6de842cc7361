-- One fixed body for every request (stateless windows, peers).
-- args: body_file path content_type
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local prepared

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local body = file:read("*a")
  file:close()
  wrk.headers["Content-Type"] = args[3]
  prepared = wrk.format("POST", args[2], nil, body)
end

function request()
  return prepared
end
