-- /score/batch (mode c): each request carries I items of P points, for I consecutive stream slots of this
-- thread (streams and ts as in streams.lua).
-- args: rows_jsonl P I S T prefix ts_base n_features model path
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
  local bodies = {}
  for _ = 1, bench.items do
    local id, ts0, start = next_item(#rows)
    bodies[#bodies + 1] = string.format('{"stream_id":"%s","points":%s%s}', id, json_points(rows, ts0, start), model_part)
  end
  return wrk.format("POST", bench.path, nil, '{"items":[' .. table.concat(bodies, ",") .. "]}")
end
