-- Stream mode as the binary frame (mode e, service/codec.py): P points per request, same stream/ts rule as
-- stream_json.lua. Values are P consecutive float32 rows of a raw little-endian file; ts are float64,
-- packed with LuaJIT's ffi (wrk embeds LuaJIT; x86 and ARM hosts are little-endian).
-- args: rows_f32 P items S T prefix ts_base n_features model path
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
local ffi = require("ffi")

local threads_made = 0
function setup(thread)
  thread:set("tid", threads_made)
  threads_made = threads_made + 1
end

local values, row_bytes, n_rows, points, own_streams, stride_threads, prefix, ts_base, model, path
local ts_buffer, counts
local sent = 0

local function u16(n) return string.char(n % 256, math.floor(n / 256) % 256) end
local function u32(n)
  return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256, math.floor(n / 16777216) % 256)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  values = file:read("*a")
  file:close()
  points = tonumber(args[2])
  local streams = tonumber(args[4])
  stride_threads = tonumber(args[5])
  own_streams = math.floor((streams - 1 - tid) / stride_threads) + 1
  prefix = args[6]
  ts_base = tonumber(args[7])
  local n_features = tonumber(args[8])
  model = args[9] or ""
  path = args[10]
  row_bytes = 4 * n_features
  n_rows = math.floor(#values / row_bytes)
  ts_buffer = ffi.new("double[?]", points)
  wrk.headers["Content-Type"] = "application/x-vigil-points"
  counts = u32(points) .. u16(n_features)
end

function request()
  local slot, round = sent % own_streams, math.floor(sent / own_streams)
  sent = sent + 1
  local g = tid + stride_threads * slot
  local ts0 = ts_base + round * points
  for j = 0, points - 1 do ts_buffer[j] = ts0 + j end
  local start = (g * 7 + round * points) % (n_rows - points)
  local id = prefix .. tostring(g)
  local body = "VGL1" .. u16(#id) .. id .. u16(#model) .. model .. counts
    .. ffi.string(ts_buffer, 8 * points) .. values:sub(start * row_bytes + 1, (start + points) * row_bytes)
  return wrk.format("POST", path, nil, body)
end
