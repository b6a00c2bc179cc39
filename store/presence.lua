-- ssebridge room presence (store/presence.lua, embedded in the binary):
-- apply one instance's changes to one room's presence, or remove a dead
-- instance's share of it, and publish the joins and leaves that result, in
-- one atomic step (so that a user's join and leave are published in the
-- order they happened, whichever instances wrote them).
--
--   EVALSHA <sha> 4 <names> <counts> <by> <streams> <instance> <op> <publish> <channel> <room> [<user> <streams>]...
--
-- KEYS[1] names    a sorted set of the users present, all of score 0 (pages in name order: ZRANGEBYLEX)
-- KEYS[2] counts   a hash: user -> streams open in the room, all instances
-- KEYS[3] by       a hash: "<instance>:<user>" -> that instance's share
-- KEYS[4] streams  the room's streams, all users and instances
-- ARGV[1] the instance (16 hex digits: "<instance>:" prefixes no other's fields)
-- ARGV[2] "set" (the pairs follow: the instance's streams of each user, absolute,
--         so that a write retried after a lost reply changes nothing) or
--         "sweep" (remove the instance's whole share)
-- ARGV[3] PUBLISH, SPUBLISH, or "" (the room has no presence events)
-- ARGV[4] the room's channel to publish on
-- ARGV[5] the room's name
-- Returns {joins, leaves}.
local inst, op, cmd, channel, room = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local joins, leaves = 0, 0

local function event(user, what)
  if cmd == '' then return end
  -- Built in this order (cjson would order an object's keys at random).
  redis.call(cmd, channel, '{"event":"presence","data":{"room":' .. cjson.encode(room) ..
    ',"user":' .. cjson.encode(user) .. ',"op":"' .. what .. '"}}')
end

-- set makes the instance's share of user n streams, and moves the totals
-- with it.
local function set(user, n)
  local field = inst .. ':' .. user
  local d = n - tonumber(redis.call('HGET', KEYS[3], field) or '0')
  if n > 0 then
    redis.call('HSET', KEYS[3], field, n)
  else
    redis.call('HDEL', KEYS[3], field)
  end
  if d == 0 then return end
  local total = redis.call('HINCRBY', KEYS[2], user, d)
  redis.call('INCRBY', KEYS[4], d)
  if total <= 0 then
    redis.call('HDEL', KEYS[2], user)
    if redis.call('ZREM', KEYS[1], user) == 1 then
      leaves = leaves + 1
      event(user, 'leave')
    end
  elseif total == d then
    redis.call('ZADD', KEYS[1], 0, user)
    joins = joins + 1
    event(user, 'join')
  end
end

if op == 'set' then
  for i = 6, #ARGV, 2 do
    set(ARGV[i], tonumber(ARGV[i + 1]))
  end
else
  local cursor = '0'
  repeat
    local r = redis.call('HSCAN', KEYS[3], cursor, 'MATCH', inst .. ':*', 'COUNT', 1000)
    cursor = r[1]
    for i = 1, #r[2], 2 do
      set(string.sub(r[2][i], #inst + 2), 0)
    end
  until cursor == '0'
end
if tonumber(redis.call('GET', KEYS[4]) or '0') <= 0 then
  redis.call('DEL', KEYS[4])
end
return {joins, leaves}
