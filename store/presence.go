package store

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ssebridge/ssebridge/stream"
	"github.com/ssebridge/ssebridge/wire"
)

//go:embed presence.lua
var presenceScript string

// userPresenceScript keeps a user's index: "<instance>:<room>" -> that
// instance's streams of the user in the room (room "": all its streams of
// the user). ARGV: instance, "set" and (room, streams) pairs, or "sweep".
const userPresenceScript = `
local inst = ARGV[1]
if ARGV[2] == 'set' then
  for i = 3, #ARGV, 2 do
    local f, n = inst .. ':' .. ARGV[i], tonumber(ARGV[i + 1])
    if n > 0 then
      redis.call('HSET', KEYS[1], f, n)
    else
      redis.call('HDEL', KEYS[1], f)
    end
  end
  return 0
end
local cursor, n = '0', 0
repeat
  local r = redis.call('HSCAN', KEYS[1], cursor, 'MATCH', inst .. ':*', 'COUNT', 1000)
  cursor = r[1]
  for i = 1, #r[2], 2 do
    n = n + redis.call('HDEL', KEYS[1], r[2][i])
  end
until cursor == '0'
return n
`

// Presence keeps who is in which room, over every instance, in Redis. Each
// instance writes its own share of a room (its streams per user) and the
// script keeps the totals, so Redis is written when membership changes,
// never to refresh it. An instance beats (one write per PRESENCE_TTL/3);
// one silent for two beats is dead, and any live instance removes its
// share (Sweep). See docs/presence.md.
type Presence struct {
	rdb      redis.UniversalClient
	instance string
	// keys is where a channel's presence keys live (one Redis: under the
	// prefix; Cluster: in the channel's partition), pub the channel and
	// command its events are published with.
	keys     func(channel string) string
	pub      func(channel string) (cmd, name string)
	registry string // the instances' beats and shares
	room     *redis.Script
	user     *redis.Script
}

// NewPresence returns the presence of one Redis (or Sentinel's primary),
// its keys and channels under prefix (CHANNEL_PREFIX).
func NewPresence(rdb *redis.Client, prefix string) *Presence {
	p := newPresence(rdb, prefix)
	p.keys = func(string) string { return prefix }
	p.pub = func(channel string) (string, string) { return "PUBLISH", prefix + channel }
	return p
}

// Presence returns the presence of the cluster: a room's keys live in the
// room's partition, where its events are published (SPUBLISH).
func (c *Cluster) Presence() *Presence {
	p := newPresence(c.cc, c.tagOf(0))
	p.keys = func(channel string) string { return c.tagOf(wire.Partition(channel, c.parts)) }
	p.pub = func(channel string) (string, string) {
		return "SPUBLISH", c.tagOf(wire.Partition(channel, c.parts)) + channel
	}
	return p
}

func newPresence(rdb redis.UniversalClient, registry string) *Presence {
	return &Presence{
		rdb:      rdb,
		instance: newInstanceID(),
		registry: registry + "presence:",
		room:     redis.NewScript(presenceScript),
		user:     redis.NewScript(userPresenceScript),
	}
}

// newInstanceID is 16 hex digits, random: a fixed length, so that
// "<instance>:" prefixes no other instance's fields, whatever the names.
func newInstanceID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return hex.EncodeToString(b)
}

// Instance is this instance's id in presence keys.
func (p *Presence) Instance() string { return p.instance }

// roomKeys are a room's four keys (see presence.lua).
func (p *Presence) roomKeys(room string) []string {
	k := p.keys(wire.RoomChannel(room)) + "presence:"
	return []string{k + "names:" + room, k + "counts:" + room, k + "by:" + room, k + "streams:" + room}
}

func (p *Presence) userKey(user string) string {
	return p.keys(wire.UserChannel(user)) + "presence:user:" + user
}

func (p *Presence) sharesKey(instance string) string { return p.registry + "shares:" + instance }

// Write sets this instance's shares a batch names: one script call per
// room and per user, in one pipeline (Cluster: one per node). The shares
// are absolute: a batch written again (its reply lost) changes nothing.
func (p *Presence) Write(ctx context.Context, b stream.PresenceBatch) error {
	rooms := map[string][]any{}
	users := map[string][]any{}
	for _, sh := range b.Shares {
		if sh.Room != "" {
			rooms[sh.Room] = append(rooms[sh.Room], sh.User, sh.Streams)
		}
		users[sh.User] = append(users[sh.User], sh.Room, sh.Streams)
	}
	calls := make([]scriptCall, 0, len(rooms)+len(users))
	for room, pairs := range rooms {
		calls = append(calls, p.roomCall(p.instance, room, "set", b.Events != nil && b.Events(room), pairs))
	}
	for user, pairs := range users {
		calls = append(calls, scriptCall{p.user, []string{p.userKey(user)}, append([]any{p.instance, "set"}, pairs...)})
	}
	// The shares' index first: a sweep must find every room the instance
	// may have a share of, should it die half way.
	shares := p.sharesKey(p.instance)
	if len(b.Entered) > 0 {
		if err := p.rdb.SAdd(ctx, shares, toAny(b.Entered)...).Err(); err != nil {
			return fmt.Errorf("writing presence: %w", err)
		}
	}
	if err := p.run(ctx, calls); err != nil {
		return fmt.Errorf("writing presence: %w", err)
	}
	if len(b.Left) > 0 {
		if err := p.rdb.SRem(ctx, shares, toAny(b.Left)...).Err(); err != nil {
			return fmt.Errorf("writing presence: %w", err)
		}
	}
	return nil
}

// scriptCall is one call of a presence script.
type scriptCall struct {
	script *redis.Script
	keys   []string
	args   []any
}

// run makes calls in one pipeline. A call refused with NOSCRIPT did not
// run (a node new or restarted): it is made again alone, loading its
// script; no call runs twice.
func (p *Presence) run(ctx context.Context, calls []scriptCall) error {
	if len(calls) == 0 {
		return nil
	}
	cmds := make([]*redis.Cmd, len(calls))
	_, err := p.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		for i, c := range calls {
			cmds[i] = c.script.EvalSha(ctx, pl, c.keys, c.args...)
		}
		return nil
	})
	if err == nil {
		return nil
	}
	for i, cmd := range cmds {
		switch {
		case cmd.Err() == nil:
		case redis.HasErrorPrefix(cmd.Err(), "NOSCRIPT"):
			c := calls[i]
			if err := c.script.Run(ctx, p.rdb, c.keys, c.args...).Err(); err != nil {
				return err
			}
		default:
			return cmd.Err()
		}
	}
	return nil
}

// roomCall is the room script's call for instance's share of room.
func (p *Presence) roomCall(instance, room, op string, events bool, pairs []any) scriptCall {
	cmd, channel := "", ""
	if events {
		cmd, channel = p.pub(wire.RoomChannel(room))
	}
	args := append([]any{instance, op, cmd, channel, room}, pairs...)
	return scriptCall{p.room, p.roomKeys(room), args}
}

func toAny(s []string) []any {
	a := make([]any, len(s))
	for i, v := range s {
		a[i] = v
	}
	return a
}

// The registry's scripts. Every time in them is Redis's (TIME), one clock
// for every instance: an instance whose own clock runs behind would be
// taken for dead by the others, one ahead swept late. Keys: the beats
// (instance -> its last beat, ms), the claims (instance -> the time a
// sweeper claimed it), and for a sweep's end the instance's shares index.
const (
	// beatScript: ARGV[1] the instance. Returns 1 when the instance had no
	// beat (new, swept, or Redis lost its data) or a sweeper had claimed
	// it: its share is gone, or going, and is to be written again.
	beatScript = `
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local had = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
if redis.call('HDEL', KEYS[2], ARGV[1]) == 1 or not had then return 1 end
return 0`
	// claimScript: ARGV[1] silence (ms), ARGV[2] how long a claim holds
	// (ms), ARGV[3] the sweeper. Claims every other instance silent for
	// silence: its beat is moved on, so that no other sweeper takes it
	// while the claim holds (one that dies half way leaves it to be
	// claimed again), and the claim noted. Returns instance, claim pairs.
	claimScript = `
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local out = {}
for _, x in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))) do
  if x ~= ARGV[3] then
    redis.call('ZADD', KEYS[1], now - tonumber(ARGV[1]) + tonumber(ARGV[2]), x)
    redis.call('HSET', KEYS[2], x, now)
    table.insert(out, x)
    table.insert(out, tostring(now))
  end
end
return out`
	// sweptScript: KEYS[3] the instance's shares index; ARGV[1] the
	// instance, ARGV[2] the claim. Ends a sweep: the instance goes, unless
	// it beat meanwhile (the claim is gone: alive, it writes its share
	// again, and its index stays).
	sweptScript = `
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1`
	// retireScript: ARGV[1] the instance, ARGV[2] silence, ARGV[3] grace
	// (ms). Sets the beat back, so that the instance is swept once grace
	// has passed.
	retireScript = `
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now - tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
return 0`
)

var (
	beatRun   = redis.NewScript(beatScript)
	claimRun  = redis.NewScript(claimScript)
	sweptRun  = redis.NewScript(sweptScript)
	retireRun = redis.NewScript(retireScript)
)

func (p *Presence) registryKeys() []string {
	return []string{p.registry + "beats", p.registry + "claims"}
}

// Beat tells the other instances this one is alive. It reports whether
// they had taken it for dead, or Redis had lost its beat: its whole share
// is to be written again.
func (p *Presence) Beat(ctx context.Context) (rewrite bool, err error) {
	n, err := beatRun.Run(ctx, p.rdb, p.registryKeys(), p.instance).Int()
	if err != nil {
		return false, fmt.Errorf("presence beat: %w", err)
	}
	return n == 1, nil
}

// Retire makes this instance's share go once grace has passed (a clean
// shutdown): its beat is set back, so that the instances still running
// sweep it then. A stream that came back elsewhere meanwhile keeps its
// user present; the others leave.
func (p *Presence) Retire(ctx context.Context, silence, grace time.Duration) error {
	err := retireRun.Run(ctx, p.rdb, p.registryKeys()[:1], p.instance, silence.Milliseconds(), grace.Milliseconds()).Err()
	if err != nil {
		return fmt.Errorf("presence: retiring: %w", err)
	}
	return nil
}

var _ stream.PresenceStore = (*Presence)(nil)

// Sweep claims every other instance silent for silence, by Redis's clock,
// removes its share, publishing its users' leaves (once: one sweeper
// claims it, and the scripts remove a share only once), then the
// instance. A claim holds for hold: a sweeper that dies half way leaves
// the instance to be claimed again then. It returns how many it swept.
func (p *Presence) Sweep(ctx context.Context, silence, hold time.Duration, events func(room string) bool) (int, error) {
	claims, err := claimRun.Run(ctx, p.rdb, p.registryKeys(), silence.Milliseconds(), hold.Milliseconds(), p.instance).StringSlice()
	if err != nil {
		return 0, fmt.Errorf("presence sweep: %w", err)
	}
	swept := 0
	for i := 0; i+1 < len(claims); i += 2 {
		if err := p.sweep(ctx, claims[i], claims[i+1], events); err != nil {
			return swept, err
		}
		swept++
	}
	return swept, nil
}

// sweep removes one claimed instance's share, then the instance.
func (p *Presence) sweep(ctx context.Context, inst, claim string, events func(room string) bool) error {
	shares, err := p.rdb.SMembers(ctx, p.sharesKey(inst)).Result()
	if err != nil {
		return fmt.Errorf("presence sweep: %w", err)
	}
	calls := make([]scriptCall, 0, len(shares))
	for _, s := range shares {
		switch name := s[1:]; s[0] {
		case 'r':
			calls = append(calls, p.roomCall(inst, name, "sweep", events != nil && events(name), nil))
		case 'u':
			calls = append(calls, scriptCall{p.user, []string{p.userKey(name)}, []any{inst, "sweep"}})
		}
	}
	if err := p.run(ctx, calls); err != nil {
		return fmt.Errorf("presence sweep of %s: %w", inst, err)
	}
	keys := append(p.registryKeys(), p.sharesKey(inst))
	if err := sweptRun.Run(ctx, p.rdb, keys, inst, claim).Err(); err != nil {
		return fmt.Errorf("presence sweep of %s: %w", inst, err)
	}
	return nil
}

// RoomPresence is who is in a room now, over every live instance.
type RoomPresence struct {
	Room  string         `json:"room"`
	Users map[string]int `json:"users"` // user -> streams in the room
	Count struct {
		Users   int64 `json:"users"`
		Streams int64 `json:"streams"`
	} `json:"count"`
	Next string `json:"next,omitempty"` // the after of the next page; "": the last
}

// Room reads a room's presence: the counts, and up to limit users (0: only
// the counts) after the name after, in name order.
func (p *Presence) Room(ctx context.Context, room, after string, limit int) (RoomPresence, error) {
	k := p.roomKeys(room)
	r := RoomPresence{Room: room}
	var users *redis.IntCmd
	var streams *redis.StringCmd
	var names *redis.StringSliceCmd
	_, err := p.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		users, streams = pl.ZCard(ctx, k[0]), pl.Get(ctx, k[3])
		if limit > 0 {
			min := "-"
			if after != "" {
				min = "(" + after
			}
			// One more than asked: whether a next page exists.
			names = pl.ZRangeByLex(ctx, k[0], &redis.ZRangeBy{Min: min, Max: "+", Count: int64(limit) + 1})
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return r, fmt.Errorf("reading presence of a room: %w", err)
	}
	r.Count.Users = users.Val()
	r.Count.Streams, _ = streams.Int64()
	if names == nil || len(names.Val()) == 0 {
		return r, nil
	}
	list := names.Val()
	if len(list) > limit {
		list = list[:limit]
		r.Next = list[limit-1]
	}
	counts, err := p.rdb.HMGet(ctx, k[1], list...).Result()
	if err != nil {
		return r, fmt.Errorf("reading presence of a room: %w", err)
	}
	r.Users = make(map[string]int, len(list))
	for i, u := range list {
		if s, ok := counts[i].(string); ok {
			if n, _ := strconv.Atoi(s); n > 0 {
				r.Users[u] = n
			}
		}
	}
	return r, nil
}

// UserPresence is where a user is now, over every live instance.
type UserPresence struct {
	User    string         `json:"user"`
	Streams int            `json:"streams"`
	Rooms   map[string]int `json:"rooms"`
}

// User reads a user's presence: their streams, and their streams per room.
func (p *Presence) User(ctx context.Context, user string) (UserPresence, error) {
	u := UserPresence{User: user, Rooms: map[string]int{}}
	fields, err := p.rdb.HGetAll(ctx, p.userKey(user)).Result()
	if err != nil {
		return u, fmt.Errorf("reading presence of a user: %w", err)
	}
	for f, v := range fields {
		_, room, ok := strings.Cut(f, ":")
		n, _ := strconv.Atoi(v)
		if !ok || n <= 0 {
			continue
		}
		if room == "" {
			u.Streams += n
		} else {
			u.Rooms[room] += n
		}
	}
	return u, nil
}
