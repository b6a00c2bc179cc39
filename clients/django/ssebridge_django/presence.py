"""Who is in a room, and where a user is, over every ssebridge instance.

Reads what ssebridge keeps in Redis (docs/presence.md in the repository),
with the same answers as GET /presence: no request to ssebridge, no token.
"""

from . import conf
from .publishing import _tag, _text, check_name, check_user


def _prefix(channel):
    """Where a channel's presence keys live: under CHANNEL_PREFIX, or on
    Redis Cluster in the channel's partition."""
    if conf.cluster():
        return _tag(channel)
    return conf.get("CHANNEL_PREFIX")


def room_presence(name, after=None, limit=1000):
    """Who is in room name now: {"room": name, "users": {user: streams},
    "count": {"users": n, "streams": n}}, plus "next" (the after= of the next
    page) when more users follow. users holds at most limit users after the
    name after, in name order; limit=0 gives the counts only."""
    name = check_name("room name", name)
    if after is not None:
        after = check_user(after)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError("limit must be an integer, 0 or more, not %r" % (limit,))
    k = _prefix("room:" + name) + "presence:"
    client = conf.redis_client()
    users = int(client.zcard(k + "names:" + name))
    streams = int(client.get(k + "streams:" + name) or 0)
    answer = {"room": name, "users": {}, "count": {"users": users, "streams": streams}}
    if limit == 0:
        return answer
    names = [_text(n) for n in client.zrangebylex(k + "names:" + name, "(" + after if after else "-", "+", start=0, num=limit + 1)]
    if len(names) > limit:
        names = names[:limit]
        answer["next"] = names[-1]
    if names:
        for n, c in zip(names, client.hmget(k + "counts:" + name, names)):
            if c is not None and int(c) > 0:
                answer["users"][n] = int(c)
    return answer


def user_presence(id):
    """Where user id is now: {"user": id, "streams": n, "rooms": {room: streams}}."""
    id = check_user(id)
    fields = conf.redis_client().hgetall(_prefix("user:" + id) + "presence:user:" + id)
    answer = {"user": id, "streams": 0, "rooms": {}}
    for f, v in fields.items():
        instance, sep, room = _text(f).partition(":")
        n = int(v)
        if not sep or n <= 0:
            continue
        if room:
            answer["rooms"][room] = answer["rooms"].get(room, 0) + n
        else:
            answer["streams"] += n
    return answer


def online(id):
    """Whether user id has a stream open anywhere."""
    return user_presence(id)["streams"] > 0
