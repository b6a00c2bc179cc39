-- ssebridge history read (store/read.lua, embedded; ssebridge's own use):
-- one page of the durable events of several channels, merged in id order.
--
--   EVALSHA <sha> 0 <prefix> <maxBytes> <maxEvents> <until> <channel> <after> [<channel> <after> ...]
--
-- after:  per channel, the entry id ("<ms>-<n>") after which to read
-- until:  the entry id up to which to read; "" on a first page: the cursor now
--
-- Returns { cursor, now_ms, done, trimmed, events, left }:
--   cursor   the value of <prefix>cursor ("" if Redis has none: data lost)
--   now_ms   the server's clock
--   done     1 when every event up to until was returned
--   trimmed  per channel, the id of the newest event trimmed from it, or ""
--   events   flat: channel index (1-based), entry id, envelope, ...
--   left     when done is 0, the indexes of the channels with events left up
--            to until (the others need no later page)
--
-- A script runs atomically, and until bounds every read, so successive pages
-- against the same until form one consistent snapshot. The page stops once
-- maxBytes of envelopes or maxEvents events are in it, so no read pulls a
-- whole history into memory.
local prefix, maxBytes, maxEvents, untilID = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local pos = redis.call('GET', prefix .. 'cursor') or ''
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if untilID == '' then
  untilID = string.match(pos, '^%w+:(%d+%-%d+)$') or '0-0'
end

local function parse(id)
  local ms, n = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ms), tonumber(n)
end

local n = (#ARGV - 4) / 2
local keys, start, buf, at, more, trimmed = {}, {}, {}, {}, {}, {}
for i = 1, n do
  local ch, after = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  keys[i] = prefix .. '{' .. ch .. '}:history'
  local ms, seq = parse(after)
  start[i] = string.format('%d-%d', ms, seq + 1)
  buf[i], at[i], more[i] = {}, 1, true
  trimmed[i] = redis.call('GET', prefix .. '{' .. ch .. '}:trimmed') or ''
end

-- head returns channel i's next entry and its parsed id, reading the
-- channel a few entries at a time.
local batch = 32
local function head(i)
  if at[i] > #buf[i] then
    if not more[i] then return nil end
    local r = redis.call('XRANGE', keys[i], start[i], untilID, 'COUNT', batch)
    buf[i], at[i] = r, 1
    if #r < batch then more[i] = false end
    if #r == 0 then return nil end
    local ms, seq = parse(r[#r][1])
    start[i] = string.format('%d-%d', ms, seq + 1)
  end
  local e = buf[i][at[i]]
  local ms, seq = parse(e[1])
  return e, ms, seq
end

-- Channels with events left to merge: one found exhausted leaves the list,
-- so a read over many channels of which few have events costs one XRANGE
-- per quiet channel, not one look per event.
local active = {}
for i = 1, n do active[i] = i end

local events, bytes, count = {}, 0, 0
while true do
  local best, bestMS, bestSeq
  local k = 1
  while k <= #active do
    local i = active[k]
    local e, ms, seq = head(i)
    if e then
      if not best or ms < bestMS or (ms == bestMS and seq < bestSeq) then
        best, bestMS, bestSeq = i, ms, seq
      end
      k = k + 1
    else
      active[k] = active[#active]
      active[#active] = nil
    end
  end
  if not best then
    return { pos, now, 1, trimmed, events, {} }
  end
  if count >= maxEvents or bytes >= maxBytes then
    -- active holds exactly the channels whose next entry is up to until.
    return { pos, now, 0, trimmed, events, active }
  end
  local e = buf[best][at[best]]
  at[best] = at[best] + 1
  local env = ''
  for k = 1, #e[2], 2 do
    if e[2][k] == 'e' then env = e[2][k + 1] end
  end
  events[#events + 1] = best
  events[#events + 1] = e[1]
  events[#events + 1] = env
  bytes, count = bytes + #env, count + 1
end
