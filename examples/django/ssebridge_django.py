"""ssebridge for Django: one file to drop into a Django project.

ssebridge (https://github.com/ssebridge/ssebridge) pushes events from Redis to
browsers over Server-Sent Events. This module is the backend's side of it:

    import ssebridge_django as sse

    def login_view(request):
        ...                                          # your own authentication
        response = redirect("home")
        sse.create_session(response, user.username, rooms=["lobby"])
        return response

    def logout_view(request):
        response = redirect("login")
        sse.end_session(request, response)
        return response

    sse.publish("room:lobby", "chat", {"from": "alice", "text": "hi"})
    sse.publish("user:bob", "dm", {"text": "psst"})
    sse.join("alice", "team-7")

Settings (all optional):

    SSEBRIDGE_REDIS_URL        redis://localhost:6379/0
    SSEBRIDGE_COOKIE           "sse_session"  (ssebridge's SESSION_COOKIE)
    SSEBRIDGE_COOKIE_SECURE    False          (True in production, over HTTPS)
    SSEBRIDGE_COOKIE_DOMAIN    None           (".example.com" to share with push.example.com)
    SSEBRIDGE_SESSION_PREFIX   "session:"     (ssebridge's SESSION_PREFIX)
    SSEBRIDGE_CHANNEL_PREFIX   "sse:"         (ssebridge's CHANNEL_PREFIX)
    SSEBRIDGE_SESSION_TTL      86400          seconds
    SSEBRIDGE_PUBLISH_SCRIPT   path of ssebridge's store/publish.lua (the
                               repository's copy by default)

Works with Django 3.2 to 5 and redis-py 4 or later.
"""

import json
import os
import secrets

import redis
from django.conf import settings

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_SCRIPT = os.path.join(_HERE, "..", "..", "store", "publish.lua")

_client = None
_script = None


def _setting(name, default):
    return getattr(settings, "SSEBRIDGE_" + name, default)


def client():
    """The Redis connection pool shared by every call of this module."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(_setting("REDIS_URL", "redis://localhost:6379/0"))
    return _client


def _publish_script():
    # register_script runs EVALSHA, and EVAL once when Redis lacks the script.
    global _script
    if _script is None:
        with open(_setting("PUBLISH_SCRIPT", _DEFAULT_SCRIPT)) as f:
            _script = client().register_script(f.read())
    return _script


def create_session(response, user, rooms=()):
    """Store an ssebridge session for user and set its cookie on response.

    Returns the token. user is a string or an integer; user ids and room names
    are 1-128 characters of letters, digits and _ - . : @.
    """
    token = secrets.token_urlsafe(32)
    ttl = int(_setting("SESSION_TTL", 86400))
    value = json.dumps({"user": user, "rooms": list(rooms)})
    client().set(_setting("SESSION_PREFIX", "session:") + token, value, ex=ttl)
    response.set_cookie(
        _setting("COOKIE", "sse_session"),
        token,
        max_age=ttl,
        httponly=True,
        samesite="Lax",
        secure=bool(_setting("COOKIE_SECURE", False)),
        domain=_setting("COOKIE_DOMAIN", None),
    )
    return token


def end_session(request, response, user=None):
    """Log out: delete the session (its streams end) and the cookie.

    With user, also ends every open stream of that user at once, on every
    ssebridge instance (a logout control message); without it, the streams of
    this session end within ssebridge's SESSION_RECHECK_INTERVAL.
    """
    name = _setting("COOKIE", "sse_session")
    token = request.COOKIES.get(name)
    if token:
        client().delete(_setting("SESSION_PREFIX", "session:") + token)
    if user is not None:
        _control({"op": "logout", "user": user})
    response.delete_cookie(name, domain=_setting("COOKIE_DOMAIN", None), samesite="Lax")


def publish(channel, event, data, durable=True):
    """Publish an event on a channel: "user:<id>", "room:<name>" or "broadcast".

    Durable by default: stored in the channel's history and given an id, so a
    browser that reconnects gets what it missed. Returns the id (None when
    durable=False: live, at most once).
    """
    envelope = json.dumps({"event": event, "data": data}, separators=(",", ":"))
    prefix = _setting("CHANNEL_PREFIX", "sse:")
    if not durable:
        client().publish(prefix + channel, envelope)
        return None
    event_id = _publish_script()(args=[prefix, channel, envelope])
    return event_id.decode() if isinstance(event_id, bytes) else event_id


def join(user, room, request=None):
    """Subscribe user's open streams to room now.

    ssebridge only acts on open streams: also add the room to the user's
    session (pass the request) so that future streams get it.
    """
    _control({"op": "join", "user": user, "room": room})
    if request is not None:
        _update_rooms(request, lambda rooms: rooms + [room] if room not in rooms else rooms)


def leave(user, room, request=None):
    """Unsubscribe user's open streams from room now (and from the session)."""
    _control({"op": "leave", "user": user, "room": room})
    if request is not None:
        _update_rooms(request, lambda rooms: [r for r in rooms if r != room])


def _control(message):
    client().publish(_setting("CHANNEL_PREFIX", "sse:") + "control", json.dumps(message))


def _update_rooms(request, change):
    token = request.COOKIES.get(_setting("COOKIE", "sse_session"))
    if not token:
        return
    key = _setting("SESSION_PREFIX", "session:") + token
    raw = client().get(key)
    if raw is None:
        return
    session = json.loads(raw)
    session["rooms"] = change(session.get("rooms", []))
    client().set(key, json.dumps(session), keepttl=True)
