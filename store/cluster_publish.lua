-- ssebridge durable publish on Redis Cluster (store/cluster_publish.lua,
-- embedded in the binary; docs/CLUSTER.md): append an event to its
-- channel's history and publish it live on its shard channel with its new
-- position, in one atomic step. Every key and the shard channel share the
-- hash tag of the channel's partition, so the call lives in one slot.
--
--   EVALSHA <sha> 4 <cursor> <config> <history> <trimmed> <shard channel> <envelope> <partitions>
--
-- With P partitions (CLUSTER_PARTITIONS, default 16), a logical channel
-- such as "room:lobby" is in partition k = crc32(channel) mod P (CRC-32
-- IEEE; Python: zlib.crc32), and with the prefix "sse:" its keys are
--   KEYS[1]  sse:{p<k>}:cursor               "<epoch>:<n>": the partition's last position (max(last + 1, now in ms))
--   KEYS[2]  sse:{p<k>}:config               hash: maxlen, ttl, maxbytes, marker, partitions (written by ssebridge)
--   KEYS[3]  sse:{p<k>}:<channel>:history    a stream: the channel's last maxlen events
--   KEYS[4]  sse:{p<k>}:<channel>:trimmed    the entry id of the newest event trimmed from it
--   ARGV[1]  sse:{p<k>}:<channel>            the shard channel (SPUBLISH); "" to publish nothing
--   ARGV[2]  the envelope, as for a live SPUBLISH; "" (ssebridge's own use) stores no event
--   ARGV[3]  P, as the caller computed k with: refused if it is not the deployment's
-- Returns "<epoch>:<n>-<ms>": the partition's epoch, the event's position in
-- its partition, and the server's clock. (The SSE id a browser sees is the
-- instance's vector of positions, docs/CLUSTER.md.)
--
-- The live message is framed "\0<marker> <epoch>:<n>-<ms>\n<envelope>"; the
-- marker is a random value that ssebridge writes into the partition's
-- config, so a payload published raw cannot pose as a durable event.
local posKey, confKey, histKey, trimKey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local shard, envelope, parts = ARGV[1], ARGV[2], ARGV[3]
local conf = redis.call('HMGET', confKey, 'maxlen', 'ttl', 'marker', 'maxbytes', 'partitions')
local maxlen, ttl, marker, maxbytes = tonumber(conf[1]) or 1000, tonumber(conf[2]) or 86400, conf[3], tonumber(conf[4]) or 65536
if not marker then
  return redis.error_reply('ssebridge has not written ' .. confKey .. ' yet: start ssebridge (it writes it when it connects to Redis), then publish')
end
if conf[5] and conf[5] ~= parts then
  return redis.error_reply('the deployment has ' .. conf[5] .. ' partitions (CLUSTER_PARTITIONS), the caller assumed ' .. tostring(parts))
end
if #envelope > maxbytes then
  return redis.error_reply('envelope is ' .. #envelope .. ' bytes, over MAX_EVENT_BYTES (' .. maxbytes .. ')')
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local epoch, n
local pos = redis.call('GET', posKey)
if pos then
  epoch, n = string.match(pos, '^(%w+):(%d+)$')
end
-- The position is a millisecond clock moved on by at least one per event:
-- a replica promoted without the last writes goes on from its own clock,
-- past the positions the old master gave out, rather than giving them again.
if epoch then
  n = math.max(tonumber(n) + 1, now)
else
  epoch, n = string.format('%x%05x', tonumber(t[1]), tonumber(t[2])), now
end
redis.call('SET', posKey, epoch .. ':' .. n)
local cursor = string.format('%s:%d-%d', epoch, n, now)
local frame = '\0' .. marker .. ' ' .. cursor .. '\n'
if envelope == '' then
  if shard ~= '' then
    redis.call('SPUBLISH', shard, frame)
  end
  return cursor
end
redis.call('XADD', histKey, string.format('%d-%d', n, now), 'e', envelope)
local over = redis.call('XLEN', histKey) - maxlen
if over > 0 then
  local old = redis.call('XRANGE', histKey, '-', '+', 'COUNT', over)
  redis.call('XTRIM', histKey, 'MAXLEN', maxlen)
  redis.call('SET', trimKey, old[#old][1], 'EX', ttl)
elseif redis.call('EXISTS', trimKey) == 1 then
  redis.call('EXPIRE', trimKey, ttl)
end
redis.call('EXPIRE', histKey, ttl)
redis.call('SPUBLISH', shard, frame .. envelope)
return cursor
