-- Shared by the stream and batch scripts: which stream and ts each generated item carries, and the arguments
-- they all take. Thread t of T owns the streams g = t (mod T); its k-th item goes to its (k mod S_t)-th stream
-- with ts ts_base + (k div S_t) * P, so every stream's ts strictly increase. Values start at row
-- (g * 7 + ts0) mod (rows - P) of the rows file, so streams differ and every row is used.
-- args: rows P I S T prefix ts_base n_features model path
-- Defines globals: setup (wrk's per-thread hook), streams_init, next_item, json_points, and `bench` (the
-- parsed arguments: points, items, prefix, model, path, n_features, rows_file).
local threads_made = 0
function setup(thread)
  thread:set("tid", threads_made)
  threads_made = threads_made + 1
end

bench = {}
local own_streams, stride_threads, ts_base
local made = 0

function streams_init(args, content_type)
  bench.rows_file = args[1]
  bench.points = tonumber(args[2])
  bench.items = tonumber(args[3])
  stride_threads = tonumber(args[5])
  own_streams = math.floor((tonumber(args[4]) - 1 - tid) / stride_threads) + 1
  bench.prefix = args[6]
  ts_base = tonumber(args[7])
  bench.n_features = tonumber(args[8])
  bench.model = args[9] or ""
  bench.path = args[10]
  wrk.headers["Content-Type"] = content_type
end

-- The next item of this thread: its stream id, its first ts and the first row of its values.
function next_item(n_rows)
  local slot, round = made % own_streams, math.floor(made / own_streams)
  made = made + 1
  local g = tid + stride_threads * slot
  local ts0 = ts_base + round * bench.points
  return bench.prefix .. tostring(g), ts0, (g * 7 + ts0) % (n_rows - bench.points)
end

-- One item's points as JSON: P objects {"ts", "values"} from consecutive rows of a JSON-lines table.
function json_points(rows, ts0, start)
  local parts = {}
  for j = 0, bench.points - 1 do
    parts[#parts + 1] = string.format('{"ts":%.0f,"values":%s}', ts0 + j, rows[start + j + 1])
  end
  return "[" .. table.concat(parts, ",") .. "]"
end

function json_rows(path)
  local rows = {}
  for line in io.lines(path) do rows[#rows + 1] = line end
  return rows
end
