-- Stream mode as the binary frame (mode e, service/codec.py): P points per request, streams and ts as in
-- streams.lua; the frame is built by vgl1.lua (wrk embeds LuaJIT; x86 and ARM hosts are little-endian).
-- args: rows_f32 P items S T prefix ts_base n_features model path
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")
dofile(dir .. "streams.lua")
dofile(dir .. "vgl1.lua")

local n_rows

function init(args)
  streams_init(args, "application/x-vigil-points")
  n_rows = vgl1_rows(bench.rows_file, bench.points, bench.n_features)
end

function request()
  local id, ts0, start = next_item(n_rows)
  return wrk.format("POST", bench.path, nil, vgl1_frame(id, bench.model, bench.points, ts0, start))
end
