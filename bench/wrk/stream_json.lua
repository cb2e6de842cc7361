-- Stream mode as JSON (modes a, b): P points per request; thread t of T owns the streams g = t (mod T).
-- Request k of a thread goes to its (k mod S_t)-th stream with ts ts_base + (k div S_t) * P, so each
-- stream's ts strictly increase. Point values cycle through the rows of a JSON-lines file.
-- args: rows_jsonl P items S T prefix ts_base n_features model path
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local threads_made = 0
function setup(thread)
  thread:set("tid", threads_made)
  threads_made = threads_made + 1
end

local rows, n_rows, points, own_streams, stride_threads, prefix, ts_base, model_part, path
local sent = 0

function init(args)
  rows = {}
  for line in io.lines(args[1]) do rows[#rows + 1] = line end
  n_rows = #rows
  points = tonumber(args[2])
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
  local slot, round = sent % own_streams, math.floor(sent / own_streams)
  sent = sent + 1
  local g = tid + stride_threads * slot
  local ts0 = ts_base + round * points
  local start = (g * 7 + ts0) % (n_rows - points)
  local parts = {}
  for j = 0, points - 1 do
    parts[#parts + 1] = string.format('{"ts":%.0f,"values":%s}', ts0 + j, rows[start + j + 1])
  end
  local body = string.format('{"stream_id":"%s%d","points":[%s]%s}', prefix, g, table.concat(parts, ","), model_part)
  return wrk.format("POST", path, nil, body)
end
