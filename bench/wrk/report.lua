-- Shared by every bench script: at the end, print one machine-readable line (latencies in microseconds).
-- bench/peakload.py reads the line that starts with WRK_JSON.
function done(summary, latency, requests)
  local e = summary.errors
  local fields = {
    string.format('"requests":%d', summary.requests),
    string.format('"duration_us":%d', summary.duration),
    string.format('"bytes":%d', summary.bytes),
    string.format('"connect_errors":%d', e.connect),
    string.format('"read_errors":%d', e.read),
    string.format('"write_errors":%d', e.write),
    string.format('"status_errors":%d', e.status),
    string.format('"timeouts":%d', e.timeout),
    string.format('"mean_us":%.1f', latency.mean),
    string.format('"max_us":%d', latency.max),
  }
  for _, p in ipairs({50, 90, 95, 99, 99.9}) do
    fields[#fields + 1] = string.format('"p%s_us":%d', tostring(p):gsub("%.", "_"), latency:percentile(p))
  end
  io.write("WRK_JSON {" .. table.concat(fields, ",") .. "}\n")
end
