-- ssebridge durable publish on Redis Cluster (store/cluster_publish.lua,
-- embedded in the binary; docs/CLUSTER.md): append an event to its
-- channel's history and publish it live on its shard channel with its new
-- position, in one atomic step. Every key and the shard channel share the
-- hash tag of the channel's partition, so the call lives in one slot.
--
--   EVALSHA <sha> 1 <history> <shard channel> <envelope> <partitions> [<idempotency key>]
--
-- With P partitions (CLUSTER_PARTITIONS, default 16), a logical channel
-- such as "room:lobby" is in partition k = crc32(channel) mod P (CRC-32
-- IEEE; Python: zlib.crc32), and with the prefix "sse:":
--   KEYS[1]  sse:{p<k>}:<channel>:history    a stream: the channel's last maxlen events
--   ARGV[1]  sse:{p<k>}:<channel>            the shard channel (SPUBLISH)
--   ARGV[2]  the envelope, as for a live SPUBLISH; "" (ssebridge's own use) stores no event
--   ARGV[3]  P, as the caller computed k with: refused if it is not the deployment's
--   ARGV[4]  optional, 1-255 visible ASCII characters: the idempotency key
--            (docs/protocol.md, "Publishing exactly once"). A key seen within
--            IDEMPOTENCY_WINDOW in this partition returns the first publish's
--            position and stores and publishes nothing; the same key with
--            another shard channel or envelope is an error
--            (IDEMPOTENCY_KEY_REUSED). Absent or "": no deduplication. The
--            key is per partition: reused on a channel of another partition,
--            it is not recognised.
--   (ARGV[5] "1", ssebridge's own use: the reply is {position, 1 if a replay else 0}.)
-- and it also uses the partition's keys, named from the history's:
--   sse:{p<k>}:cursor   "<epoch>:<n>:<writer>:<ends>": the partition's last position,
--                       the replication id of the node that wrote it, and where
--                       earlier terms ended (below)
--   sse:{p<k>}:config   hash: maxlen, ttl, maxbytes, marker, partitions, idemttl (written by ssebridge)
--   sse:{p<k>}:idem:<key>  "<sha1 of shard channel \n envelope> <position>", for idemttl
--                       seconds (default 300). While the slot migrates, the source
--                       refuses a call whose key it does not hold (Redis: "non
--                       local key"), having written nothing: retry it.
-- Returns "<epoch>:<n>-<ms>": the partition's epoch, the event's position in
-- its partition (a term and a count: never given out twice, whatever the
-- clocks and failovers), and the server's clock. (The SSE id a browser sees is the
-- instance's vector of positions, docs/CLUSTER.md.)
--
-- Only the history is declared: while the slot migrates, Redis serves a
-- call whose declared keys are all on one node, and refuses one whose keys
-- are partly missing for the whole migration (TRYAGAIN), as a new
-- channel's history is. The history routes the call to the node that has
-- it (the source), or, missing there, to the target, where the partition's
-- keys are read before anything is written: absent, the call is refused
-- and writes nothing. When events are trimmed, the newest trimmed id is
-- kept in the history itself (its max-deleted-entry-id, XSETID), so it
-- moves with it.
--
-- The live message is framed "\0<marker> <epoch>:<n>-<ms>\n<envelope>"; the
-- marker is a random value that ssebridge writes into the partition's
-- config, so a payload published raw cannot pose as a durable event.
local histKey = KEYS[1]
local shard, envelope, parts, key, report = ARGV[1], ARGV[2], ARGV[3], ARGV[4] or '', ARGV[5]
local tag = string.match(histKey, '^(.-{p%d+}:).+:history$')
if not tag then
  return redis.error_reply(histKey .. ' is not the history of a channel (<prefix>{p<k>}:<channel>:history)')
end
local posKey, confKey = tag .. 'cursor', tag .. 'config'
local conf = redis.call('HMGET', confKey, 'maxlen', 'ttl', 'marker', 'maxbytes', 'partitions', 'idemttl')
local maxlen, ttl, marker, maxbytes = tonumber(conf[1]) or 1000, tonumber(conf[2]) or 86400, conf[3], tonumber(conf[4]) or 65536
local idemttl = tonumber(conf[6]) or 300
local pos = redis.call('GET', posKey)
if not marker or not pos then
  return redis.error_reply('ssebridge has not written ' .. confKey .. ' and ' .. posKey .. ' on this node yet: start ssebridge (it writes them when it connects to Redis), then publish; or, if the slot is migrating, retry once its keys have moved')
end
if conf[5] and conf[5] ~= parts then
  return redis.error_reply('the deployment has ' .. conf[5] .. ' partitions (CLUSTER_PARTITIONS), the caller assumed ' .. tostring(parts))
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
-- first position and changes nothing.
local idemKey, fingerprint
if key ~= '' then
  if envelope == '' then
    return redis.error_reply('an idempotency key is for an event: a mark (empty envelope) takes none')
  end
  if #key > 255 or string.find(key, '[^\33-\126]') then
    return redis.error_reply('the idempotency key must be 1-255 visible ASCII characters')
  end
  idemKey = tag .. 'idem:' .. key
  fingerprint = redis.sha1hex(shard .. '\n' .. envelope)
  -- While the slot migrates and its keys are still on this node (the
  -- source), a record not made yet cannot be made here: Redis refuses it.
  -- Nothing is written then; TRYAGAIN is what clients retry on.
  local seen = redis.pcall('GET', idemKey)
  if type(seen) == 'table' and seen.err then
    return redis.error_reply('TRYAGAIN the slot is migrating and this idempotency key has no record here yet; nothing was written: ' .. seen.err)
  end
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
-- The position: term * 2^32 + count (docs/CLUSTER.md, "Position scheme").
-- The cursor is "<epoch>:<position>:<writer>:<ends>": writer the
-- replication id of the node that last wrote it, ends the last position of
-- each earlier term ("<term>=<position>,...", the newest last, at most 16)
-- as the writer after it had it. "<epoch>:<position>" is an earlier
-- version's (a millisecond clock), taken over as from a writer unknown.
local epoch, p, writer, ends = string.match(pos, '^(%w+):(%d+):(%x*):([%d=,]*)$')
if not epoch then
  epoch, p = string.match(pos, '^(%w+):(%d+)$')
  writer, ends = '', ''
end
if not epoch then
  return redis.error_reply(posKey .. ' is not a position of ssebridge: ' .. pos)
end
local TERM = 4294967296
p = tonumber(p)
local function ended(term, last)
  local e = {}
  for x in string.gmatch(ends, '[^,]+') do e[#e + 1] = x end
  e[#e + 1] = string.format('%d=%d', term, last)
  while #e > 16 do table.remove(e, 1) end
  ends = table.concat(e, ',')
end
local me = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
if writer ~= me then
  -- Another node wrote the cursor last, or this one before a restart (Redis
  -- gives a promoted replica and a restarted master a new replication
  -- id): it may have given out positions past p that never reached this
  -- node. A new term, above every term an earlier writer can have used:
  -- above this node's last, and from this node's config epoch, which a
  -- promotion makes greater than that of every earlier master of the slot.
  local term = math.floor(p / TERM)
  local ce = tonumber(string.match(redis.call('CLUSTER', 'INFO'), 'cluster_my_epoch:(%d+)')) or 0
  ended(term, p)
  p = math.max(term + 1, math.min(ce, 65535) * 32) * TERM
end
local n = p + 1
if n % TERM == 0 then
  -- The term's count is spent: the next term, by the same writer.
  ended(n / TERM - 1, p)
  n = n + 1
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', posKey, string.format('%s:%d:%s:%s', epoch, n, me, ends))
local cursor = string.format('%s:%d-%d', epoch, n, now)
local frame = '\0' .. marker .. ' ' .. cursor .. '\n'
if envelope == '' then
  if shard ~= '' then
    redis.call('SPUBLISH', shard, frame)
  end
  return reply(cursor, 0)
end
local id = string.format('%d-%d', n, now)
redis.call('XADD', histKey, id, 'e', envelope)
local over = redis.call('XLEN', histKey) - maxlen
if over > 0 then
  local old = redis.call('XRANGE', histKey, '-', '+', 'COUNT', over)
  redis.call('XTRIM', histKey, 'MAXLEN', maxlen)
  redis.call('XSETID', histKey, id, 'MAXDELETEDID', old[#old][1])
end
redis.call('EXPIRE', histKey, ttl)
redis.call('SPUBLISH', shard, frame .. envelope)
if idemKey then
  redis.call('SET', idemKey, fingerprint .. ' ' .. cursor, 'EX', idemttl)
end
return reply(cursor, 0)
