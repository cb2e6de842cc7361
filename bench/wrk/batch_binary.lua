-- /score/batch as the binary batch frame (mode i, service/codec.py): b"VGLB", uint32 items, then per item its
-- length and one VGL1 frame of P points. Streams and ts follow batch_json.lua (thread t of T owns the streams
-- g = t (mod T); item k goes to slot k mod S_t with ts ts_base + (k div S_t) * P); each frame is built by
-- vgl1.lua.
-- args: rows_f32 P I S T prefix ts_base n_features model path
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
dofile(dir .. "vgl1.lua")

local threads_made = 0
function setup(thread)
  thread:set("tid", threads_made)
  threads_made = threads_made + 1
end

local n_rows, points, items, own_streams, stride_threads, prefix, ts_base, model, path
local item_counter = 0

function init(args)
  points = tonumber(args[2])
  items = tonumber(args[3])
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
  local frames = { "VGLB", u32(items) }
  for _ = 1, items do
    local slot, round = item_counter % own_streams, math.floor(item_counter / own_streams)
    item_counter = item_counter + 1
    local g = tid + stride_threads * slot
    local ts0 = ts_base + round * points
    local frame = vgl1_frame(prefix .. tostring(g), model, points, ts0, (g * 7 + ts0) % (n_rows - points))
    frames[#frames + 1] = u32(#frame)
    frames[#frames + 1] = frame
  end
  return wrk.format("POST", path, nil, table.concat(frames))
end
