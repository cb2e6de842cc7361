-- /score/batch as the binary batch frame (mode i, service/codec.py): b"VGLB", uint32 items, then per item its
-- length and one VGL1 frame of P points. Streams and ts follow batch_json.lua (thread t of T owns the streams
-- g = t (mod T); item k goes to slot k mod S_t with ts ts_base + (k div S_t) * P); values are P consecutive
-- float32 rows of a raw little-endian file, ts float64 packed with LuaJIT's ffi.
-- args: rows_f32 P I S T prefix ts_base n_features model path
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
local ffi = require("ffi")

local threads_made = 0
function setup(thread)
  thread:set("tid", threads_made)
  threads_made = threads_made + 1
end

local values, row_bytes, n_rows, points, items, own_streams, stride_threads, prefix, ts_base, model, path
local ts_buffer, counts
local item_counter = 0

local function u16(n) return string.char(n % 256, math.floor(n / 256) % 256) end
local function u32(n)
  return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256, math.floor(n / 16777216) % 256)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  values = file:read("*a")
  file:close()
  points = tonumber(args[2])
  items = tonumber(args[3])
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
  local frames = { "VGLB", u32(items) }
  for _ = 1, items do
    local slot, round = item_counter % own_streams, math.floor(item_counter / own_streams)
    item_counter = item_counter + 1
    local g = tid + stride_threads * slot
    local ts0 = ts_base + round * points
    for j = 0, points - 1 do ts_buffer[j] = ts0 + j end
    local start = (g * 7 + ts0) % (n_rows - points)
    local id = prefix .. tostring(g)
    local frame = "VGL1" .. u16(#id) .. id .. u16(#model) .. model .. counts
      .. ffi.string(ts_buffer, 8 * points) .. values:sub(start * row_bytes + 1, (start + points) * row_bytes)
    frames[#frames + 1] = u32(#frame)
    frames[#frames + 1] = frame
  end
  return wrk.format("POST", path, nil, table.concat(frames))
end
