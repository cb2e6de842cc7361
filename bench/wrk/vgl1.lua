-- The binary frame's encoding (service/codec.py), shared by stream_binary.lua and batch_binary.lua: little-endian
-- integers, and one VGL1 frame of P points whose ts (float64, packed with LuaJIT's ffi) run from ts0 and whose
-- values are P consecutive float32 rows of the raw rows file. Defines globals: u16, u32, vgl1_rows, vgl1_frame.
local ffi = require("ffi")

function u16(n) return string.char(n % 256, math.floor(n / 256) % 256) end
function u32(n)
  return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256, math.floor(n / 16777216) % 256)
end

local ts_buffer, values, row_bytes, counts

-- Reads the raw float32 rows file; returns the number of rows.
function vgl1_rows(path, points, n_features)
  local file = assert(io.open(path, "rb"))
  values = file:read("*a")
  file:close()
  row_bytes = 4 * n_features
  ts_buffer = ffi.new("double[?]", points)
  counts = u32(points) .. u16(n_features)
  return math.floor(#values / row_bytes)
end

function vgl1_frame(id, model, points, ts0, start)
  for j = 0, points - 1 do ts_buffer[j] = ts0 + j end
  return "VGL1" .. u16(#id) .. id .. u16(#model) .. model .. counts
    .. ffi.string(ts_buffer, 8 * points) .. values:sub(start * row_bytes + 1, (start + points) * row_bytes)
end
