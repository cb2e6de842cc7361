-- /score/batch as the binary batch frame (mode i, service/codec.py): b"VGLB", uint32 items, then per item its
-- length and one VGL1 frame of P points (vgl1.lua); streams and ts as in streams.lua.
-- args: rows_f32 P I S T prefix ts_base n_features model path
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
  local frames = { "VGLB", u32(bench.items) }
  for _ = 1, bench.items do
    local id, ts0, start = next_item(n_rows)
    local frame = vgl1_frame(id, bench.model, bench.points, ts0, start)
    frames[#frames + 1] = u32(#frame)
    frames[#frames + 1] = frame
  end
  return wrk.format("POST", bench.path, nil, table.concat(frames))
end
