"""The window store's Lua scripts (``service.windows`` runs them): the append of one stream and of many, the
commit of scored windows, the release of a failed request's claim. Each keeps one stream's keys consistent in
one atomic call; the meaning of the keys and of the claim is in ``service.windows``.
"""

from __future__ import annotations

# Shared Lua: the first window end at or after index f, the claim of the due windows, and the trim.
_LUA_HELPERS = """
local function first_end_from(f, L, stride)
  if f <= L - 1 then return L - 1 end
  return L - 1 + math.ceil((f - (L - 1)) / stride) * stride
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Claims the windows due from next_end (if any) for token; returns first, last end and their records.
local function claim_due(list, meta, token, claim_ms, next_end, count, L, stride)
  if next_end > count - 1 then return -1, -1, {} end
  local last_end = next_end + math.floor((count - 1 - next_end) / stride) * stride
  redis.call('HSET', meta, 'claim', token, 'claim_until', now_ms() + claim_ms)
  local base = count - redis.call('LLEN', list)
  return next_end, last_end, redis.call('LRANGE', list, next_end - L + 1 - base, last_end - base)
end
-- Keeps the points the first unscored window needs, or the last L.
local function trim(list, next_end, count, L)
  local keep_from = math.min(next_end - L + 1, count - L)
  if keep_from > 0 then redis.call('LTRIM', list, keep_from - count, -1) end
end
"""

# One stream's append: its points are ARGV[first], ARGV[first + 1], ... ARGV[last] as (ts, record) pairs. Returns
# {count_before, status per point (0 accepted, 1 duplicate, 2 stale), first and last claimed window end (-1:
# none), their records, next_end, windows abandoned}, or {-1, bound model}, or {-2, index of the point, previous
# ts} when a point jumps further ahead than max_jump, or {-4, stored record bytes, sent record bytes} when the
# stream's model kept its name but changed its sensor count (a restart with another bundle): nothing is written.
# The meta hash keeps the record size ('rec') since 2026-12-07; a stream stored before has none until its next
# append writes it.
_LUA_APPEND_STREAM = """
local function append_stream(wkey, mkey, model, L, stride, ttl, token, claim_ms, max_backlog, max_jump, first, last)
  local meta = redis.call('HMGET', mkey, 'model', 'last_ts', 'count', 'next_end', 'claim', 'claim_until', 'rec')
  if meta[1] and meta[1] ~= model then return {-1, meta[1]} end
  local rec = string.len(ARGV[first + 1])
  if meta[7] and tonumber(meta[7]) ~= rec then return {-4, meta[7], rec} end
  local last_ts = meta[2] and tonumber(meta[2]) or nil
  local last_text = meta[2]
  local count = tonumber(meta[3] or '0')
  local status, held = {}, nil
  for i = first, last, 2 do
    local t = tonumber(ARGV[i])
    if last_ts == nil or t > last_ts then
      if last_ts ~= nil and max_jump > 0 and t - last_ts > max_jump then
        return {-2, (i - first) / 2, string.format('%.17g', last_ts)}
      end
      last_ts = t
      status[#status + 1] = 0
    else
      if held == nil then  -- the ts still in the list, once: a retry of many points stays linear
        held = {}
        for _, r in ipairs(redis.call('LRANGE', wkey, 0, -1)) do held[struct.unpack('<d', r)] = true end
      end
      if held[t] then status[#status + 1] = 1 else status[#status + 1] = 2 end
    end
  end
  local pushed = 0
  for i = first, last, 2 do
    if status[(i - first) / 2 + 1] == 0 then
      redis.call('RPUSH', wkey, ARGV[i + 1])
      last_text, pushed = ARGV[i], pushed + 1
    end
  end
  local count_after = count + pushed
  local next_end = tonumber(meta[4] or '-1')
  if next_end < 0 then next_end = first_end_from(count, L, stride) end  -- kept since before the frontier
  local abandoned = 0
  local backlog = count_after - (next_end - L + 1)
  if backlog > max_backlog and next_end <= count_after - 1 then
    abandoned = math.min(math.ceil((backlog - max_backlog) / stride),
                         math.floor((count_after - 1 - next_end) / stride) + 1)
    next_end = next_end + abandoned * stride
  end
  local first_end, last_end, window = -1, -1, {}
  local claim, until_ms = meta[5], tonumber(meta[6] or '0')
  if not claim or claim == token or until_ms <= now_ms() then
    first_end, last_end, window = claim_due(wkey, mkey, token, claim_ms, next_end, count_after, L, stride)
  end
  if pushed > 0 or abandoned > 0 or meta[4] == false then
    trim(wkey, next_end, count_after, L)
    redis.call('HSET', mkey, 'model', model, 'rec', rec, 'count', count_after, 'next_end', next_end)
    if last_text then redis.call('HSET', mkey, 'last_ts', last_text) end
  end
  redis.call('EXPIRE', wkey, ttl)
  redis.call('EXPIRE', mkey, ttl)
  return {count, status, first_end, last_end, window, next_end, abandoned}
end
"""

# KEYS: window list, meta hash. ARGV: model, L, stride, ttl_s, token, claim_ms, max_backlog, max_jump, then per
# point: ts, record. Returns one stream's reply (above).
APPEND_LUA = (
    _LUA_HELPERS
    + _LUA_APPEND_STREAM
    + """
return append_stream(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5],
                     tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), 9, #ARGV)
"""
)

# Many streams' appends in one call (a round of a batch request on one Redis; not on a Redis Cluster, whose
# streams live in different slots). KEYS: window list and meta hash of each stream. ARGV: ttl_s, claim_ms,
# max_jump, then per stream: model, L, stride, token, max_backlog, point count, then its points as ts, record.
# Returns each stream's reply, in order: the same as an APPEND_LUA call per stream in that order, or {-3} for a
# stream whose keys hold another kind of value (where its own call would fail with WRONGTYPE), nothing written.
APPEND_MANY_LUA = (
    _LUA_HELPERS
    + _LUA_APPEND_STREAM
    + """
local ttl, claim_ms, max_jump = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function holds(key, kind)
  local t = redis.call('TYPE', key)['ok']
  return t == 'none' or t == kind
end
local out, i = {}, 4
for s = 1, #KEYS, 2 do
  local first = i + 6
  local last = first + 2 * tonumber(ARGV[i + 5]) - 1
  if holds(KEYS[s], 'list') and holds(KEYS[s + 1], 'hash') then
    out[#out + 1] = append_stream(KEYS[s], KEYS[s + 1], ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]),
                                  ttl, ARGV[i + 3], claim_ms, tonumber(ARGV[i + 4]), max_jump, first, last)
  else  -- a key holding another kind of value would abort the script halfway: this stream fails alone
    out[#out + 1] = {-3}
  end
  i = last + 1
end
return out
"""
)

# KEYS: window list, meta hash[, alert hash]. ARGV: token, last scored end, L, stride, claim_ms[, last scored ts].
# Moves next_end past the scored windows and claims what became due meanwhile; {-1} when the claim went to
# another request; {-2} when the alert hash is given and has not seen the last scored point (its update failed).
COMMIT_LUA = (
    _LUA_HELPERS
    + """
local meta = redis.call('HMGET', KEYS[2], 'count', 'next_end', 'claim')
if meta[3] ~= ARGV[1] then return {-1} end
if KEYS[3] then
  local seen = redis.call('HGET', KEYS[3], 'last_ts')
  if not seen or tonumber(seen) < tonumber(ARGV[6]) then return {-2} end
end
local L, stride, claim_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local count = tonumber(meta[1])
local next_end = math.max(tonumber(meta[2]), tonumber(ARGV[2]) + stride)
redis.call('HSET', KEYS[2], 'next_end', next_end)
local first, last_end, window = claim_due(KEYS[1], KEYS[2], ARGV[1], claim_ms, next_end, count, L, stride)
if first < 0 then redis.call('HDEL', KEYS[2], 'claim', 'claim_until') end
trim(KEYS[1], next_end, count, L)
return {first, last_end, window, next_end}
"""
)

# KEYS: meta hash. ARGV: token. Gives up the claim (a failed request), so the next request scores its windows.
RELEASE_LUA = """
if redis.call('HGET', KEYS[1], 'claim') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'claim', 'claim_until')
  return 1
end
return 0
"""

# KEYS: window list, meta hash. ARGV: model. Deletes the stream's window (a restart after a gap) unless another
# model owns the stream: {-1, bound}; else {keys deleted}.
RESTART_LUA = """
local bound = redis.call('HGET', KEYS[2], 'model')
if bound and bound ~= ARGV[1] then return {-1, bound} end
return {redis.call('DEL', KEYS[1], KEYS[2])}
"""
