-- ssebridge durable publish (store/publish.lua, embedded in the binary):
-- append an event to its channel's history and publish it live with its new
-- id, in one atomic step.
--
--   EVALSHA <sha> 0 <prefix> <channel> <envelope> [<idempotency key>]
--   EVAL "<this file>" 0 sse: room:lobby '{"event":"chat","data":{"text":"hi"}}' 5f0c2a9e-order-1234
--
-- prefix:   ssebridge's CHANNEL_PREFIX (default "sse:")
-- channel:  a logical channel: "user:<id>", "room:<name>" or "broadcast"
-- envelope: the event as for a live PUBLISH: {"event":..., "data":...}
-- key:      optional, 1-255 visible ASCII characters: the idempotency key
--           (docs/protocol.md, "Publishing exactly once"). A key seen within
--           IDEMPOTENCY_WINDOW returns the first publish's id and stores and
--           publishes nothing; the same key with another channel or
--           envelope is an error (IDEMPOTENCY_KEY_REUSED). Absent or "":
--           no deduplication. Retry a call that failed on the network with
--           the same key: it may have run.
-- (ARGV[5] "1", ssebridge's own use: the reply is {id, 1 if a replay else 0}.)
-- Returns the event's id, "<epoch>:<ms>-<n>": the SSE id: of the event.
--
-- With an empty envelope (ssebridge's own use) no event is stored: the
-- script only takes a new id, a position that streams can resume from, and
-- publishes it on the channel if one is named, so that idle streams' ids
-- stay within the retention.
--
-- Keys (all under prefix; named here, not passed as KEYS, so that a backend
-- calls the script with 0 keys). A channel's two keys share the hash tag
-- {<channel>}; channel names never hold braces, so no channel's keys can be
-- another's:
--   <prefix>cursor                  the id of the last durable event, on every channel
--   <prefix>config                  hash: maxlen, ttl, maxbytes, marker, idemttl (written by ssebridge when it connects)
--   <prefix>idem:<key>              "<sha1 of channel \n envelope> <id>", for idemttl seconds (default 300)
--   <prefix>{<channel>}:history     a stream: the channel's last maxlen events
--   <prefix>{<channel>}:trimmed     the id of the newest event trimmed from it
--
-- The live message is framed "\0<marker> <id>\n<envelope>". The marker is a
-- random value that ssebridge writes into config; a payload published raw
-- cannot carry it, so it cannot pose as a durable event.
--
-- Ids grow across all channels together (milliseconds from the server's clock,
-- then a counter within the millisecond), so one id is a cursor over every
-- channel a browser's stream has. The epoch changes if Redis loses the
-- cursor key (a restart without persistence): older ids then mean nothing.
local prefix, channel, envelope, key, report = ARGV[1], ARGV[2], ARGV[3], ARGV[4] or '', ARGV[5]
local conf = redis.call('HMGET', prefix .. 'config', 'maxlen', 'ttl', 'marker', 'maxbytes', 'idemttl')
local maxlen, ttl, marker, maxbytes = tonumber(conf[1]) or 1000, tonumber(conf[2]) or 86400, conf[3], tonumber(conf[4]) or 65536
local idemttl = tonumber(conf[5]) or 300
if not marker then
  return redis.error_reply('ssebridge has not written ' .. prefix .. 'config yet: start ssebridge (it writes it when it connects to Redis), then publish')
end
if #envelope > maxbytes then
  return redis.error_reply('envelope is ' .. #envelope .. ' bytes, over MAX_EVENT_BYTES (' .. maxbytes .. ')')
end
local function reply(cursor, replayed)
  if report == '1' then
    return {cursor, replayed}
  end
  return cursor
end
-- The key is checked before anything is written: a repeat returns the
-- first id and changes nothing.
local idemKey, fingerprint
if key ~= '' then
  if envelope == '' then
    return redis.error_reply('an idempotency key is for an event: a position or a mark (empty envelope) takes none')
  end
  if #key > 255 or string.find(key, '[^\33-\126]') then
    return redis.error_reply('the idempotency key must be 1-255 visible ASCII characters')
  end
  idemKey = prefix .. 'idem:' .. key
  fingerprint = redis.sha1hex(channel .. '\n' .. envelope)
  local seen = redis.call('GET', idemKey)
  if seen then
    local fp, first = string.match(seen, '^(%x+) (.+)$')
    if fp ~= fingerprint then
      return redis.error_reply('IDEMPOTENCY_KEY_REUSED this idempotency key was used within IDEMPOTENCY_WINDOW for another channel or envelope: a key names one event')
    end
    -- Written again as it is: a write after the first publish's, so
    -- that a WAIT after this call (DURABLE_WAIT_REPLICAS) covers it.
    redis.call('SET', idemKey, seen, 'KEEPTTL')
    return reply(first, 1)
  end
end
local posKey = prefix .. 'cursor'
local histKey = prefix .. '{' .. channel .. '}:history'
local trimKey = prefix .. '{' .. channel .. '}:trimmed'

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local epoch, ms, n
local pos = redis.call('GET', posKey)
if pos then
  epoch, ms, n = string.match(pos, '^(%w+):(%d+)%-(%d+)$')
end
if epoch then
  ms, n = tonumber(ms), tonumber(n)
else
  epoch, ms, n = string.format('%x%05x', tonumber(t[1]), tonumber(t[2])), 0, 0
end
if now > ms then
  ms, n = now, 0
else
  n = n + 1
end
local id = string.format('%d-%d', ms, n)
local cursor = epoch .. ':' .. id

redis.call('SET', posKey, cursor)
local frame = '\0' .. marker .. ' ' .. cursor .. '\n'
if envelope == '' then
  if channel ~= '' then
    redis.call('PUBLISH', prefix .. channel, frame)
  end
  return reply(cursor, 0)
end
redis.call('XADD', histKey, id, 'e', envelope)
local over = redis.call('XLEN', histKey) - maxlen
if over > 0 then
  local old = redis.call('XRANGE', histKey, '-', '+', 'COUNT', over)
  redis.call('XTRIM', histKey, 'MAXLEN', maxlen)
  redis.call('SET', trimKey, old[#old][1], 'EX', ttl)
elseif redis.call('EXISTS', trimKey) == 1 then
  redis.call('EXPIRE', trimKey, ttl)
end
redis.call('EXPIRE', histKey, ttl)
redis.call('PUBLISH', prefix .. channel, frame .. envelope)
if idemKey then
  redis.call('SET', idemKey, fingerprint .. ' ' .. cursor, 'EX', idemttl)
end
return reply(cursor, 0)
