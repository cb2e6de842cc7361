-- Stream mode as the binary frame (mode e, service/codec.py): P points per request, same stream/ts rule as
-- stream_json.lua; the frame is built by vgl1.lua (wrk embeds LuaJIT; x86 and ARM hosts are little-endian).
-- args: rows_f32 P items S T prefix ts_base n_features model path
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
dofile(dir .. "vgl1.lua")

local threads_made = 0
function setup(thread)
  thread:set("tid", threads_made)
  threads_made = threads_made + 1
end

local n_rows, points, own_streams, stride_threads, prefix, ts_base, model, path
local sent = 0

function init(args)
  points = tonumber(args[2])
  local streams = tonumber(args[4])
  stride_threads = tonumber(args[5])
  own_streams = math.floor((streams - 1 - tid) / stride_threads) + 1
  prefix = args[6]
  ts_base = tonumber(args[7])
  model = args[9] or ""
  path = args[10]
  n_rows = vgl1_rows(args[1], points, tonumber(args[8]))
  wrk.headers["Content-Type"] = "application/x-vigil-points"
end

function request()
  local slot, round = sent % own_streams, math.floor(sent / own_streams)
  sent = sent + 1
  local g = tid + stride_threads * slot
  local start = (g * 7 + round * points) % (n_rows - points)
  local body = vgl1_frame(prefix .. tostring(g), model, points, ts_base + round * points, start)
  return wrk.format("POST", path, nil, body)
end
