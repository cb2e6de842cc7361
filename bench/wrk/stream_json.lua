-- Stream mode as JSON (modes a, b): P points per request, streams and ts as in streams.lua; point values
-- cycle through the rows of a JSON-lines file.
-- args: rows_jsonl P items S T prefix ts_base n_features model path
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
dofile(dir .. "streams.lua")

local rows, model_part

function init(args)
  streams_init(args, "application/json")
  rows = json_rows(bench.rows_file)
  model_part = bench.model ~= "" and (',"model":"' .. bench.model .. '"') or ""
end

function request()
  local id, ts0, start = next_item(#rows)
  local body = string.format('{"stream_id":"%s","points":%s%s}', id, json_points(rows, ts0, start), model_part)
  return wrk.format("POST", bench.path, nil, body)
end
