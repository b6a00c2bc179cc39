-- ssebridge replay size (store/size.lua, embedded; ssebridge's own use):
-- counts the bytes of the durable events of some channels' histories in a
-- range, without sending them, so that a replay over REPLAY_MAX_BYTES can
-- be told so before any of it is written.
--
--   EVALSHA <sha> <n> <history key>... <budget> <overhead> <maxBytes> <maxEntries> <end> <start>...
--
-- start:   per key, the first entry id to count ("<a>-<b>"), or "" for none
-- end:     the entry id up to which to count
-- Each entry with a non-empty envelope counts its length plus overhead
-- (what Read returns, as the replay counts it). The call stops once it has
-- counted more than budget (the caller needs no more), or maxBytes or
-- maxEntries in this call (it keeps one call short: Redis runs nothing else
-- meanwhile; the caller calls again from where it stopped).
--
-- Returns { bytes, next }: bytes counted, and per key the id to go on from,
-- or "" when nothing is left up to end. On Redis Cluster the keys of one
-- call are in one slot (one partition).
local budget, overhead = tonumber(ARGV[1]), tonumber(ARGV[2])
local maxBytes, maxEntries, last = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local batch = 16
local bytes, entries, nxt = 0, 0, {}
for i = 1, #KEYS do nxt[i] = ARGV[5 + i] end
for i = 1, #KEYS do
  while nxt[i] ~= '' do
    if bytes > budget or bytes >= maxBytes or entries >= maxEntries then
      return { bytes, nxt }
    end
    local r = redis.call('XRANGE', KEYS[i], nxt[i], last, 'COUNT', batch)
    for _, e in ipairs(r) do
      local f = e[2]
      for k = 1, #f, 2 do
        if f[k] == 'e' and #f[k + 1] > 0 then bytes = bytes + #f[k + 1] + overhead end
      end
    end
    entries = entries + #r
    if #r < batch then
      nxt[i] = ''
    else
      local a, b = string.match(r[#r][1], '^(%d+)%-(%d+)$')
      nxt[i] = string.format('%d-%d', tonumber(a), tonumber(b) + 1)
    end
  end
end
return { bytes, nxt }
