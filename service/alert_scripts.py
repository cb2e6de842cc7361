"""The alert tracker's Lua scripts (``service.alerts`` runs them): the lifecycle update of one stream, whose
events go to the stream's outbox in the same atomic call, and the publish of an outbox to ``vigil:alerts``.
``models.lifecycle`` is the same lifecycle in Python, op for op.
"""

from __future__ import annotations

# KEYS: alert state hash, outbox list[, the stream's meta hash: when given and gone (the stream was deleted while
# a request scored it), nothing is written, so a late update cannot bring back the state of a deleted stream].
# ARGV: warning, critical, exit_ratio, k, n, m, ttl, adaptive (0/1), z_warning,
# z_critical, z_exit, alpha, sigma_floor, warmup, min_ratio, max_ratio, then per point: ts, score, sensors.
# Returns {events, levels}: events as {state, severity, started, ts, peak, sensors, escalated, threshold}, levels one
# character per point (0 normal, 1 warning, 2 critical, - skipped). models/lifecycle.py is the same algorithm
# in Python, op for op: keep them in step (tests/service/test_alert_lifecycle_equivalence.py). Timestamps and
# peaks keep the client's text and numbers are stored with 17 significant digits, so nothing is rounded.
ALERT_LUA = """
if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 0 then  -- the stream was deleted since it was scored
  return {{}, string.rep('-', (#ARGV - 16) / 3), 0}
end
local warn0, crit0, ratio = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local k, n, m, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local adaptive = ARGV[8] == '1'
local zw, zc, ze = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local alpha, floor = tonumber(ARGV[12]), tonumber(ARGV[13])
local warmup, lo, hi = tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16])
local s = redis.call('HMGET', KEYS[1], 'state', 'severity', 'started', 'peak', 'peak_sensors', 'flags', 'below',
                     'last_ts', 'seen', 'mean', 'var')
local state, severity, started = s[1] or 'ok', s[2] or 'warning', s[3] or '0'
local peak_text, peak_sensors, flags = s[4] or '0', s[5] or '', s[6] or ''
local peak, below = tonumber(peak_text), tonumber(s[7] or '0')
local last_text = s[8]
local last_ts = last_text and tonumber(last_text) or nil
local seen, mean, var = tonumber(s[9] or '0'), tonumber(s[10] or '0'), tonumber(s[11] or '0')
local function fmt(x) return string.format('%.17g', x) end
local events, levels = {}, {}
local function emit(st, ts_text, escalated, warn, crit)
  local thr = warn
  if severity == 'critical' then thr = crit end
  local event = {st, severity, started, ts_text, peak_text, peak_sensors, escalated and '1' or '0', fmt(thr)}
  events[#events + 1] = event
  redis.call('RPUSH', KEYS[2], cjson.encode(event))  -- the outbox: published after, durably
end
for i = 17, #ARGV, 3 do
  local ts_text, score_text, sensors = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local ts, score = tonumber(ts_text), tonumber(score_text)
  if last_ts == nil or ts > last_ts then
    last_ts, last_text = ts, ts_text
    local warn, crit, exitv = warn0, crit0, warn0 * ratio
    if adaptive and seen >= warmup then
      local sd = math.max(math.sqrt(var), floor)
      local rw = mean + zw * sd
      local rc = mean + zc * sd
      local re = math.max(mean + ze * sd, 0)
      warn = math.min(math.max(rw * rw, warn0 * lo), warn0 * hi)
      crit = math.min(math.max(rc * rc, crit0 * lo), crit0 * hi)
      crit = math.max(crit, warn)
      exitv = math.min(re * re, warn)
    end
    local over = score >= warn
    flags = string.sub(flags .. (over and '1' or '0'), -n)
    local _, hits = string.gsub(flags, '1', '')
    if state == 'ok' and over then
      state, severity, started, peak, peak_text, peak_sensors, below =
        'pending', 'warning', ts_text, score, score_text, sensors, 0
      emit('pending', ts_text, false, warn, crit)
    end
    if state == 'pending' then
      if score > peak then peak, peak_text, peak_sensors = score, score_text, sensors end
      if score >= crit then severity = 'critical' end
      if hits >= k or score >= crit then
        state = 'firing'
        emit('firing', ts_text, false, warn, crit)
      elseif hits == 0 then
        state = 'ok'
        emit('cancelled', ts_text, false, warn, crit)
      end
    elseif state == 'firing' then
      if score > peak then peak, peak_text, peak_sensors = score, score_text, sensors end
      if score >= crit and severity ~= 'critical' then
        severity = 'critical'
        emit('firing', ts_text, true, warn, crit)
      end
      if score < exitv then below = below + 1 else below = 0 end
      if below >= m then
        emit('resolved', ts_text, false, warn, crit)
        state, flags, below, peak, peak_text, peak_sensors = 'ok', '', 0, 0, '0', ''
      end
    end
    if score >= crit then levels[#levels + 1] = '2' elseif over then levels[#levels + 1] = '1'
    else levels[#levels + 1] = '0' end
    if adaptive then
      local root = math.sqrt(score)
      if seen < warmup then
        seen = seen + 1
        local d = root - mean
        mean = mean + d / seen
        var = var + (d * (root - mean) - var) / seen
      elseif state == 'ok' and score < warn then
        local d = root - mean
        mean = mean + alpha * d
        var = (1 - alpha) * (var + alpha * d * d)
      end
    end
  else
    levels[#levels + 1] = '-'
  end
end
redis.call('HSET', KEYS[1], 'state', state, 'severity', severity, 'started', started, 'peak', peak_text,
           'peak_sensors', peak_sensors, 'flags', flags, 'below', below, 'seen', seen, 'mean', fmt(mean),
           'var', fmt(var))
if last_text then redis.call('HSET', KEYS[1], 'last_ts', last_text) end
redis.call('EXPIRE', KEYS[1], ttl)
local waiting = redis.call('LLEN', KEYS[2])  -- this call's events and any a failed publish left
if waiting > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
return {events, table.concat(levels), waiting}
"""

# KEYS: a stream's outbox, the alert event stream. ARGV: maxlen, stream id, model. Appends the outbox's events
# to the event stream in order and empties it, atomically: each event is published exactly once. Returns each
# event's id, state, ts and escalated flag, in order. (On a Redis
# Cluster the two keys live in different slots: there the same happens in two steps, at least once.)
PUBLISH_LUA = """
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local ids = {}
for i, entry in ipairs(entries) do
  local e = cjson.decode(entry)
  ids[#ids + 1] = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'stream_id', ARGV[2], 'model', ARGV[3],
                      'state', e[1], 'severity', e[2], 'started_ts', e[3], 'ts', e[4], 'peak_score', e[5],
                      'sensors', e[6], 'escalated', e[7], 'threshold', e[8])
  ids[#ids + 1] = e[1]  -- the event's key (service.alerts.event_key): state, ts, escalated
  ids[#ids + 1] = e[4]
  ids[#ids + 1] = e[7]
end
redis.call('DEL', KEYS[1])
return ids
"""

# KEYS: the alert event stream. ARGV: where to start (an exclusive id "(<id>" or "-"), a stream id, how many
# entries to scan, how many to return at most. The entries of that stream (and any without a stream_id, for the
# reader to log and skip) among the next ARGV[3] after ARGV[1]; returns {the last entry scanned ("" when none
# was left), {{id, {field, value, ...}}, ...}}. A filtered read scans the retained stream in Redis, a page per
# call, so other streams' events never cross the wire (bench.alert_reads).
FILTER_LUA = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[3]))
local found, last, most = {}, '', tonumber(ARGV[4])
for _, entry in ipairs(entries) do
  last = entry[1]
  local fields, of = entry[2], nil
  for i = 1, #fields, 2 do
    if fields[i] == 'stream_id' then of = fields[i + 1] break end
  end
  if of == nil or of == ARGV[2] then
    found[#found + 1] = entry
    if #found >= most then break end
  end
end
return {last, found}
"""
