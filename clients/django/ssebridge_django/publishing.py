"""Publishing events and control messages into Redis, for ssebridge to carry.

Works anywhere Django's settings are configured: a view, a Celery task, a
management command. Nothing here needs a request.
"""

import hashlib
import json
import re

from django.core.serializers.json import DjangoJSONEncoder

from . import conf

# User ids and room names, as ssebridge accepts them.
NAME = re.compile(r"\A[A-Za-z0-9_.:@-]{1,128}\Z")

BROADCAST = "broadcast"
CONTROL = "control"


def check_name(kind, name):
    """name as ssebridge will see it (a string), or ValueError."""
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        raise ValueError("%s must be a string or an integer, not %r" % (kind, name))
    name = str(name)
    if not NAME.match(name):
        raise ValueError("%s %r: want 1-128 letters, digits and _ - . : @" % (kind, name))
    return name


def user(id):
    """The channel of every open stream of a user: "user:<id>"."""
    return "user:" + check_name("user id", id)


def room(name):
    """The channel of a room: "room:<name>"."""
    return "room:" + check_name("room name", name)


def check_channel(channel):
    """channel if it is "broadcast", "user:<id>" or "room:<name>", else ValueError."""
    if channel == BROADCAST:
        return channel
    kind, sep, name = str(channel).partition(":")
    if sep and kind == "user":
        return user(name)
    if sep and kind == "room":
        return room(name)
    raise ValueError('channel %r: want "broadcast", "user:<id>" or "room:<name>"' % (channel,))


def envelope(event, data):
    """The JSON ssebridge expects: {"event": ..., "data": ...}, compact."""
    if not isinstance(event, str) or not event or "\r" in event or "\n" in event:
        raise ValueError("event must be a non-empty name without CR or LF, not %r" % (event,))
    return json.dumps({"event": event, "data": data}, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False)


def publish(channel, event, data):
    """Publish an event live (at most once: a stream not connected misses it).

    channel is "broadcast", user(id) or room(name); data is anything
    JSON-serializable (with Django's encoder: dates, decimals, UUIDs). Returns
    how many Redis subscribers (ssebridge instances) received it.
    """
    payload = envelope(event, data)
    return conf.redis_client().publish(conf.get("CHANNEL_PREFIX") + check_channel(channel), payload)


def _load_script():
    try:
        from importlib.resources import files
    except ImportError:  # Python < 3.9
        import os

        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "publish.lua"), "rb") as f:
            return f.read()
    return files(__package__).joinpath("publish.lua").read_bytes()


# ssebridge's store/publish.lua, shipped in this package; ssebridge embeds
# the same bytes, so the SHA is the same on both sides.
SCRIPT = _load_script()
SCRIPT_SHA = hashlib.sha1(SCRIPT).hexdigest()


def publish_durable(channel, event, data):
    """Publish an event durably: stored in the channel's history with an id,
    atomically with its live delivery, so a browser that reconnects gets it.

    Returns the event's id, "<epoch>:<ms>-<n>" (the SSE id: the browser sees).
    One round trip: EVALSHA, or EVAL when Redis does not have the script yet.
    """
    import redis

    args = (conf.get("CHANNEL_PREFIX"), check_channel(channel), envelope(event, data))
    client = conf.redis_client()
    try:
        event_id = client.evalsha(SCRIPT_SHA, 0, *args)
    except redis.exceptions.NoScriptError:
        event_id = client.eval(SCRIPT.decode("utf-8"), 0, *args)
    return event_id.decode() if isinstance(event_id, bytes) else event_id


def control(op, user, room=None, pipe=None):
    """Publish a control message: {"op": op, "user": ..., "room": ...}."""
    message = {"op": op, "user": check_name("user id", user)}
    if room is not None:
        message["room"] = check_name("room name", room)
    target = pipe if pipe is not None else conf.redis_client()
    return target.publish(conf.get("CHANNEL_PREFIX") + CONTROL, json.dumps(message, separators=(",", ":")))


def join(user, room):
    """Subscribe the user's open streams to room, now, on every ssebridge.

    Only open streams: future ones get the session's rooms (set_rooms updates
    both)."""
    return control("join", user, room)


def leave(user, room):
    """Unsubscribe the user's open streams from room, now."""
    return control("leave", user, room)


def logout_user(user):
    """End every open stream of the user at once (event: logout), on every
    ssebridge and every device. Their sessions are left as they are."""
    return control("logout", user)
