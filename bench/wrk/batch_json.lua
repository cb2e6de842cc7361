-- /score/batch (mode c): each request carries I items, one point each, for I consecutive stream slots of
-- this thread (thread t of T owns the streams g = t (mod T)); item k goes to slot k mod S_t with ts
-- ts_base + (k div S_t) * P.
-- args: rows_jsonl P I S T prefix ts_base n_features model path
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local threads_made = 0
function setup(thread)
  thread:set("tid", threads_made)
  threads_made = threads_made + 1
end

local rows, n_rows, points, items, own_streams, stride_threads, prefix, ts_base, model_part, path
local item_counter = 0

function init(args)
  rows = {}
  for line in io.lines(args[1]) do rows[#rows + 1] = line end
  n_rows = #rows
  points = tonumber(args[2])
  items = tonumber(args[3])
  local streams = tonumber(args[4])
  stride_threads = tonumber(args[5])
  own_streams = math.floor((streams - 1 - tid) / stride_threads) + 1
  prefix = args[6]
  ts_base = tonumber(args[7])
  model_part = (args[9] ~= nil and args[9] ~= "") and (',"model":"' .. args[9] .. '"') or ""
  path = args[10]
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local bodies = {}
  for _ = 1, items do
    local slot, round = item_counter % own_streams, math.floor(item_counter / own_streams)
    item_counter = item_counter + 1
    local g = tid + stride_threads * slot
    local ts0 = ts_base + round * points
    local start = (g * 7 + ts0) % (n_rows - points)
    local parts = {}
    for j = 0, points - 1 do
      parts[#parts + 1] = string.format('{"ts":%.0f,"values":%s}', ts0 + j, rows[start + j + 1])
    end
    bodies[#bodies + 1] = string.format('{"stream_id":"%s%d","points":[%s]%s}', prefix, g, table.concat(parts, ","), model_part)
  end
  return wrk.format("POST", path, nil, '{"items":[' .. table.concat(bodies, ",") .. "]}")
end
