"""The ssebridge session: a JSON value in Redis under a random token, and a
cookie holding that token, which the browser sends to ssebridge."""

import json
import secrets

from django.core.exceptions import ImproperlyConfigured
from django.http.response import HttpResponseBase

from . import conf
from .publishing import _text, check_name, check_user, control, grant_positions


def _key(token):
    return conf.get("SESSION_PREFIX") + token


def _cookie_attrs():
    samesite = conf.get("COOKIE_SAMESITE")
    secure = conf.cookie_secure()
    if samesite is not None and str(samesite).lower() == "none" and not secure:
        raise ImproperlyConfigured('SSEBRIDGE["COOKIE_SAMESITE"] = "None" needs SSEBRIDGE["COOKIE_SECURE"] = True')
    return {
        "httponly": True,
        "samesite": samesite,
        "secure": secure,
        "domain": conf.get("COOKIE_DOMAIN"),
        "path": conf.get("COOKIE_PATH"),
    }


def login(request, response, user=None, rooms=()):
    """Start an ssebridge session for user and set its cookie on response,
    revoking the session the browser held before (request's cookie).

    user is a string or an integer (one that fits in 64 bits, as ssebridge
    requires), rooms the room names the user's streams may have. Deletes
    the session named by request's cookie, if any: left in Redis for its
    TTL, its token would still open streams of the earlier user (its open
    streams end within ssebridge's SESSION_RECHECK_INTERVAL). Then stores
    {"user": ..., "rooms": [...]} under a new random token for SESSION_TTL
    seconds and sets the cookie (HttpOnly, COOKIE_SAMESITE, COOKIE_SECURE).
    Returns the token (a secret: do not log it).
    """
    if isinstance(request, HttpResponseBase):
        # The call of version 0.1: login(response, user, rooms). Without the
        # request the earlier session cannot be revoked; refuse, and say so.
        raise TypeError("ssebridge_django.login(request, response, user, rooms=()) takes the request first "
                        "(it revokes the session the browser held before), not login(response, user, ...)")
    # user has a default only so that the old two-argument call gets the
    # TypeError above rather than Python's; None is refused below.
    new, _ = issue(request, response, user, rooms, int(conf.get("SESSION_TTL")))
    return new


def issue(request, response, user, rooms, ttl, position=None):
    """login's work, for login and the middleware: take (delete) the
    browser's earlier session, store a new one for ttl seconds, set the
    cookie. Two Redis round trips (more on Redis Cluster). With position (the
    history's position, read by the caller, who knows the earlier session
    is gone), one. Returns (token, the earlier session as a dict, or None)."""
    check_user(user)
    rooms = _rooms(rooms)
    _cookie_attrs()  # raises on bad settings before anything is written
    client = conf.redis_client()
    old = token(request)
    if position is not None:
        taken, granted = None, {r: position for r in rooms}
    elif conf.cluster():
        taken = _take(old)
        granted = grant_positions(rooms)
    else:
        # The earlier session taken (before the new one exists: no moment
        # with both) and the history's position read, in one round trip.
        pipe = client.pipeline(transaction=True)
        if old is not None:
            pipe.get(_key(old))
            pipe.delete(_key(old))
        pipe.get(conf.get("CHANNEL_PREFIX") + "cursor")
        replies = pipe.execute()
        taken = json.loads(replies[0]) if old is not None and replies[0] is not None else None
        granted = {r: _text(replies[-1]) for r in rooms}
    previous = taken or {}
    if str(previous.get("user")) == str(user):
        # Rooms she had already keep their grant: a tab that resumes
        # across the login gets what it missed of them.
        kept = previous.get("granted") or {}
        granted.update({r: kept[r] for r in rooms if r in kept})
    new = secrets.token_urlsafe(32)
    value = json.dumps({"user": user, "rooms": rooms, "granted": granted}, separators=(",", ":"))
    client.set(_key(new), value, ex=ttl)
    set_cookie(response, new, ttl)
    return new, taken


def set_cookie(response, value, ttl):
    """The ssebridge cookie on response, with the attributes of the settings."""
    response.set_cookie(conf.get("COOKIE"), value, max_age=ttl, **_cookie_attrs())


def clear_cookie(response):
    """Clear the ssebridge cookie on response (same domain and path as set)."""
    response.set_cookie(conf.get("COOKIE"), "", max_age=0, expires="Thu, 01 Jan 1970 00:00:00 GMT", **_cookie_attrs())


def _take(t):
    """Delete the session stored under token t and return it (a dict), or
    None if there is none."""
    if t is None:
        return None
    if conf.cluster():
        # No MULTI on a cluster client: GETDEL is one atomic command.
        raw = conf.redis_client().execute_command("GETDEL", _key(t))
    else:
        pipe = conf.redis_client().pipeline(transaction=True)
        pipe.get(_key(t))
        pipe.delete(_key(t))
        raw, _ = pipe.execute()
    return json.loads(raw) if raw is not None else None


def _rooms(rooms):
    if isinstance(rooms, str):
        raise ValueError("rooms must be a list of names, not a string")
    out = []
    for r in rooms:
        r = check_name("room name", r)
        if r not in out:
            out.append(r)
    return out


def token(request):
    """The request's ssebridge token (its cookie), or None."""
    return request.COOKIES.get(conf.get("COOKIE")) or None


def get_session(request):
    """The request's ssebridge session as a dict ({"user":..., "rooms":[...]}),
    or None when there is none (no cookie, expired, logged out)."""
    t = token(request)
    if t is None:
        return None
    raw = conf.redis_client().get(_key(t))
    return json.loads(raw) if raw is not None else None


def logout(request, response, end_streams=True):
    """End the request's ssebridge session: delete it from Redis, clear the
    cookie on response and, with end_streams, publish a logout control
    message for its user, which ends every open stream of that user at once
    (on every device: the control message names a user, not a session).
    Without it, this session's streams end within ssebridge's
    SESSION_RECHECK_INTERVAL.

    Returns the session's user, or None if there was no session.
    """
    user = (_take(token(request)) or {}).get("user")
    if end_streams and user is not None:
        control("logout", user)
    clear_cookie(response)
    return user


def set_rooms(request, rooms):
    """Set the rooms of the request's session, for future streams, and
    join/leave the user's open streams to match, now: one atomic step.

    Returns the new list of rooms, or None if the request has no session.
    """
    import redis

    t = token(request)
    if t is None:
        return None
    rooms = _rooms(rooms)
    key = _key(t)
    if conf.cluster():
        return _set_rooms_cluster(key, rooms)
    with conf.redis_client().pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                if raw is None:
                    return None
                session = json.loads(raw)
                added, removed = _change_rooms(session, rooms)
                pipe.multi()
                # KEEPTTL: the session keeps its expiry.
                pipe.set(key, json.dumps(session, separators=(",", ":")), keepttl=True)
                for r, since in added.items():
                    control("join", session["user"], r, pipe=pipe, since=since)
                for r in removed:
                    control("leave", session["user"], r, pipe=pipe)
                pipe.execute()
                return rooms
            except redis.WatchError:
                continue


def _set_rooms_cluster(key, rooms):
    """set_rooms on Redis Cluster: the session is written first (SET XX
    KEEPTTL), then the control messages are published on their shard
    channel: a session key and the control channel are in different slots,
    so they cannot be one MULTI. Two set_rooms of one session at once may
    interleave; the last SET wins, as the session's future streams see."""
    client = conf.redis_client()
    raw = client.get(key)
    if raw is None:
        return None
    session = json.loads(raw)
    added, removed = _change_rooms(session, rooms)
    if not client.set(key, json.dumps(session, separators=(",", ":")), keepttl=True, xx=True):
        return None  # gone meanwhile
    for r, since in added.items():
        control("join", session["user"], r, since=since)
    for r in removed:
        control("leave", session["user"], r)
    return rooms


def _change_rooms(session, rooms):
    """Give session the rooms: those it gains are granted now, those it
    keeps keep their grant. Returns the rooms gained, each with its grant
    position (a join's since), and the rooms lost."""
    before = [str(r) for r in session.get("rooms") or []]
    kept = session.get("granted") or {}
    added = grant_positions([r for r in rooms if r not in before])
    granted = {r: kept[r] for r in rooms if r in before and r in kept}
    granted.update(added)
    session["rooms"], session["granted"] = rooms, granted
    return added, [r for r in before if r not in rooms]
