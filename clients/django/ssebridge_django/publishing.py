"""Publishing events and control messages into Redis, for ssebridge to carry.

Works anywhere Django's settings are configured: a view, a Celery task, a
management command. Nothing here needs a request.
"""

import hashlib
import json
import logging
import re
import time
import uuid
import zlib

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


# ssebridge reads an integer user as a 64-bit signed integer (wire/session.go
# parseUser) and refuses a session whose user does not fit.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_user(user):
    """user as ssebridge will see it (a string), or ValueError: ssebridge's
    rule (wire/session.go parseUser, wire/names.go CheckName). A string is a
    name (1-128 letters, digits and _ - . : @); an integer must fit in 64
    bits (signed), and is then the name of its decimal digits. A bool, a
    float or anything else is refused."""
    if isinstance(user, int) and not isinstance(user, bool) and not INT64_MIN <= user <= INT64_MAX:
        raise ValueError("user id %r: an integer user must fit in 64 bits (signed), as ssebridge requires" % (user,))
    return check_name("user id", user)


def user(id):
    """The channel of every open stream of a user: "user:<id>"."""
    return "user:" + check_user(id)


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


def partition(channel, partitions):
    """The partition of a logical channel on Redis Cluster: CRC-32 (IEEE) of
    its name, modulo the number of partitions, as ssebridge computes it."""
    return zlib.crc32(channel.encode("utf-8")) % partitions


def _tag(channel):
    """The prefix of a channel's keys and shard channel on Redis Cluster:
    "<CHANNEL_PREFIX>{p<partition>}:"."""
    return "%s{p%d}:" % (conf.get("CHANNEL_PREFIX"), partition(channel, conf.get("CLUSTER_PARTITIONS")))


def _spublish(client, channel, payload):
    """SPUBLISH on channel's shard channel, at the node of its slot."""
    shard = _tag(channel) + channel
    return client.execute_command("SPUBLISH", shard, payload, target_nodes=client.get_node_from_key(shard))


def publish(channel, event, data):
    """Publish an event live (at most once: a stream not connected misses it).

    channel is "broadcast", user(id) or room(name); data is anything
    JSON-serializable (with Django's encoder: dates, decimals, UUIDs). Returns
    how many Redis subscribers (ssebridge instances) received it. On Redis
    Cluster it goes over sharded pub/sub (SPUBLISH).
    """
    payload = envelope(event, data)
    channel = check_channel(channel)
    if conf.cluster():
        return _spublish(conf.redis_client(), channel, payload)
    return conf.redis_client().publish(conf.get("CHANNEL_PREFIX") + channel, payload)


def _load_script(name):
    try:
        from importlib.resources import files
    except ImportError:  # Python < 3.9
        import os

        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), "rb") as f:
            return f.read()
    return files(__package__).joinpath(name).read_bytes()


# ssebridge's store/publish.lua, shipped in this package; ssebridge embeds
# the same bytes, so the SHA is the same on both sides.
SCRIPT = _load_script("publish.lua")
SCRIPT_SHA = hashlib.sha1(SCRIPT).hexdigest()

# ssebridge's store/cluster_publish.lua, for Redis Cluster.
CLUSTER_SCRIPT = _load_script("cluster_publish.lua")
CLUSTER_SCRIPT_SHA = hashlib.sha1(CLUSTER_SCRIPT).hexdigest()


class _HandledNoScript(logging.Filter):
    """redis-py's cluster client logs every error reply with its traceback
    (logger "redis.cluster", ERROR) before raising it. A NoScriptError is
    no error here: a node that has not cached the script yet (the first
    publish after a start or a failover) is sent the script with EVAL."""

    def filter(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and type(exc).__name__ == "NoScriptError")


logging.getLogger("redis.cluster").addFilter(_HandledNoScript())


class IdempotencyKeyReused(Exception):
    """The idempotency key was used within ssebridge's IDEMPOTENCY_WINDOW
    for another channel or event: a key names one event. Nothing was
    published."""


# Idempotency keys, as ssebridge accepts them: 1-255 visible ASCII characters.
IDEMPOTENCY_KEY = re.compile(r"\A[\x21-\x7e]{1,255}\Z")


def new_idempotency_key():
    """A new idempotency key: a random UUID (version 4)."""
    return str(uuid.uuid4())


def publish_durable(channel, event, data, idempotency_key=None):
    """Publish an event durably: stored in the channel's history with an id,
    atomically with its live delivery, so a browser that reconnects gets it.

    Returns the event's id, "<epoch>:<ms>-<n>" (the SSE id: the browser sees).
    One round trip: EVALSHA, or EVAL when Redis does not have the script yet.
    On Redis Cluster it returns the event's position in its partition,
    "<epoch>:<n>-<ms>" (the browser's id is a vector: docs/CLUSTER.md).

    idempotency_key (1-255 visible ASCII characters; None: a new random one
    per call) makes the call publish at most once: the same key again within
    ssebridge's IDEMPOTENCY_WINDOW returns the first call's id and publishes
    nothing. A call that raised a connection error or a timeout may have
    published: retry it with the same key (publish_durable_retrying does).
    The key with another channel or event raises IdempotencyKeyReused.
    """
    import redis

    channel = check_channel(channel)
    if idempotency_key is None:
        idempotency_key = new_idempotency_key()
    if not isinstance(idempotency_key, str) or not IDEMPOTENCY_KEY.match(idempotency_key):
        raise ValueError("idempotency_key %r: want 1-255 visible ASCII characters" % (idempotency_key,))
    client = conf.redis_client()
    try:
        if conf.cluster():
            tag = _tag(channel)
            # One key, the history: the script names the partition's cursor and
            # config from it, so a slot migration does not refuse it (docs/CLUSTER.md).
            args = (tag + channel + ":history", tag + channel, envelope(event, data),
                    conf.get("CLUSTER_PARTITIONS"), idempotency_key)
            try:
                event_id = client.evalsha(CLUSTER_SCRIPT_SHA, 1, *args)
            except redis.exceptions.NoScriptError:
                event_id = client.eval(CLUSTER_SCRIPT.decode("utf-8"), 1, *args)
        else:
            args = (conf.get("CHANNEL_PREFIX"), channel, envelope(event, data), idempotency_key)
            try:
                event_id = client.evalsha(SCRIPT_SHA, 0, *args)
            except redis.exceptions.NoScriptError:
                event_id = client.eval(SCRIPT.decode("utf-8"), 0, *args)
    except redis.exceptions.ResponseError as e:
        if str(e).startswith("IDEMPOTENCY_KEY_REUSED"):
            raise IdempotencyKeyReused(str(e)) from e
        raise
    return event_id.decode() if isinstance(event_id, bytes) else event_id


def _retryable():
    """The errors after which a publish may or may not have run, or that say
    it did not run yet (a cluster moving or failing over)."""
    import redis.exceptions as x

    kinds = [x.ConnectionError, x.TimeoutError]
    for name in ("ClusterDownError", "TryAgainError", "MasterDownError"):
        if hasattr(x, name):
            kinds.append(getattr(x, name))
    return tuple(kinds)


def publish_durable_retrying(channel, event, data, attempts=3, delay=0.2, idempotency_key=None):
    """publish_durable, retried up to attempts times in all on a connection
    error or a timeout, with one idempotency key for every attempt (a new
    one when None), after delay, then twice that, and so on: the event is
    published at most once, as long as the attempts fall within ssebridge's
    IDEMPOTENCY_WINDOW. Raises the last error when every attempt failed."""
    if idempotency_key is None:
        idempotency_key = new_idempotency_key()
    retryable = _retryable()
    for attempt in range(attempts):
        try:
            return publish_durable(channel, event, data, idempotency_key=idempotency_key)
        except retryable:
            if attempt + 1 >= attempts:
                raise
            time.sleep(delay * 2**attempt)


def grant_positions(rooms):
    """Where Redis's history is now, for each room: the position a room is
    granted at (a session's "granted", a join's "since"). ssebridge never
    sends a stream a room's events from before its grant. The value of
    <CHANNEL_PREFIX>cursor ("" while there is no history); on Redis Cluster,
    of the room's partition's cursor key."""
    client = conf.redis_client()
    if conf.cluster():
        keys = {r: _tag(room(r)) + "cursor" for r in rooms}
        values = {k: _text(client.get(k)) for k in set(keys.values())}
        return {r: values[k] for r, k in keys.items()}
    position = _text(client.get(conf.get("CHANNEL_PREFIX") + "cursor"))
    return {r: position for r in rooms}


def _text(value):
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def control(op, user, room=None, pipe=None, since=None):
    """Publish a control message: {"op": op, "user": ..., "room": ...}, and
    "since" (a join's grant position) when given.

    On Redis Cluster it goes to the shard channel of "control", never in a
    pipe (a MULTI cannot span the session's slot and the channel's)."""
    message = {"op": op, "user": check_user(user)}
    if room is not None:
        message["room"] = check_name("room name", room)
    if since is not None:
        message["since"] = since
    if conf.cluster():
        return _spublish(conf.redis_client(), CONTROL, json.dumps(message, separators=(",", ":")))
    target = pipe if pipe is not None else conf.redis_client()
    return target.publish(conf.get("CHANNEL_PREFIX") + CONTROL, json.dumps(message, separators=(",", ":")))


def join(user, room):
    """Subscribe the user's open streams to room, now, on every ssebridge,
    granted now: they get none of the room's events from before.

    Only open streams: future ones get the session's rooms (set_rooms updates
    both)."""
    room = check_name("room name", room)
    return control("join", user, room, since=grant_positions([room])[room])


def leave(user, room):
    """Unsubscribe the user's open streams from room, now."""
    return control("leave", user, room)


def logout_user(user):
    """End every open stream of the user at once (event: logout), on every
    ssebridge and every device. Their sessions are left as they are."""
    return control("logout", user)
