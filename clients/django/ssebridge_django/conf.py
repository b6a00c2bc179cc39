"""ssebridge's settings for Django: one dict, read when used (never at import).

    SSEBRIDGE = {
        "REDIS_URL": "redis://127.0.0.1:6379/0",   # the Redis ssebridge reads (its REDIS_URL)
        "URL": "https://push.example.com",         # where browsers reach ssebridge
        "COOKIE_SECURE": True,
    }

Every key is optional; DEFAULTS lists them. A key that is not one of them is
an error (a typo would otherwise be silently ignored).
"""

import threading

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS = {
    # The Redis shared with ssebridge (ssebridge's REDIS_URL).
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    # Extra keyword arguments for redis.Redis.from_url (timeouts, TLS, ...),
    # or for redis.cluster.RedisCluster with REDIS_CLUSTER_ADDRS.
    "REDIS_OPTIONS": {},
    # Redis Cluster (ssebridge's REDIS_CLUSTER_ADDRS): "host:port,..." or a
    # list of "host:port", some or all of the cluster's nodes; instead of
    # REDIS_URL. Events then go over sharded pub/sub (docs/CLUSTER.md).
    "REDIS_CLUSTER_ADDRS": None,
    # ssebridge's CLUSTER_PARTITIONS: the same as every ssebridge's.
    "CLUSTER_PARTITIONS": 16,
    # Where browsers reach ssebridge: the base of {% ssebridge_url %} and
    # {% ssebridge_script %}.
    "URL": "http://127.0.0.1:8080",
    # ssebridge's SESSION_PREFIX, CHANNEL_PREFIX and SESSION_COOKIE.
    "SESSION_PREFIX": "session:",
    "CHANNEL_PREFIX": "sse:",
    "COOKIE": "sse_session",
    # Seconds a session (and its cookie) lasts.
    "SESSION_TTL": 86400,
    # The cookie's attributes. It is always HttpOnly. It must reach ssebridge:
    # same site ("Lax"), and COOKIE_DOMAIN=".example.com" when ssebridge is
    # on another host of the site. "None" needs COOKIE_SECURE.
    "COOKIE_SAMESITE": "Lax",
    # None: Secure unless settings.DEBUG (a token must not cross plain HTTP
    # in production; a development server has no HTTPS). True or False to choose.
    "COOKIE_SECURE": None,
    "COOKIE_DOMAIN": None,
    "COOKIE_PATH": "/",
    # The middleware (ssebridge_django.middleware.SSEBridgeSessionMiddleware):
    # a function (request, user) -> the rooms of a new session, as a dotted
    # path ("myapp.rooms.for_user") or a callable; None: no rooms.
    "ROOMS": None,
    # A function (user) -> the ssebridge user id of a Django user, dotted
    # path or callable; None: user.pk.
    "USER_ID": None,
    # Seconds during which the middleware trusts its own note of the last
    # renewal and asks Redis nothing; None: SESSION_TTL // 10.
    "SESSION_RENEW_INTERVAL": None,
}

_SAMESITE = {"lax", "strict", "none"}


def get(name):
    """The value of one setting: the project's SSEBRIDGE[name], or its default."""
    if name not in DEFAULTS:
        raise KeyError(name)
    return _user_settings().get(name, DEFAULTS[name])


def _user_settings():
    value = getattr(settings, "SSEBRIDGE", None) or {}
    if not isinstance(value, dict):
        raise ImproperlyConfigured("SSEBRIDGE must be a dict, not %s" % type(value).__name__)
    return value


def problems():
    """What is wrong with settings.SSEBRIDGE, as a list of sentences."""
    try:
        user = _user_settings()
    except ImproperlyConfigured as e:
        return [str(e)]
    out = []
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        out.append("SSEBRIDGE has unknown keys %s (known: %s)" % (", ".join(unknown), ", ".join(sorted(DEFAULTS))))
    samesite = user.get("COOKIE_SAMESITE", DEFAULTS["COOKIE_SAMESITE"])
    if samesite is not None and str(samesite).lower() not in _SAMESITE:
        out.append('SSEBRIDGE["COOKIE_SAMESITE"] must be "Lax", "Strict", "None" or None, not %r' % (samesite,))
    elif samesite is not None and str(samesite).lower() == "none" and not _secure(user.get("COOKIE_SECURE")):
        out.append('SSEBRIDGE["COOKIE_SAMESITE"] = "None" needs SSEBRIDGE["COOKIE_SECURE"] = True (browsers drop the cookie otherwise)')
    parts = user.get("CLUSTER_PARTITIONS", DEFAULTS["CLUSTER_PARTITIONS"])
    if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= 256:
        out.append('SSEBRIDGE["CLUSTER_PARTITIONS"] must be a number from 1 to 256 (ssebridge\'s bound), not %r' % (parts,))
    try:
        cluster_addrs(user.get("REDIS_CLUSTER_ADDRS"))
    except ValueError as e:
        out.append(str(e))
    ttl = user.get("SESSION_TTL", DEFAULTS["SESSION_TTL"])
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        out.append('SSEBRIDGE["SESSION_TTL"] must be a positive number of seconds, not %r' % (ttl,))
    for name in ("ROOMS", "USER_ID"):
        value = user.get(name)
        if value is not None and not callable(value) and not isinstance(value, str):
            out.append('SSEBRIDGE["%s"] must be a dotted path or a callable, not %r' % (name, value))
    renew = user.get("SESSION_RENEW_INTERVAL")
    if renew is not None and (isinstance(renew, bool) or not isinstance(renew, int) or renew < 0):
        out.append('SSEBRIDGE["SESSION_RENEW_INTERVAL"] must be a number of seconds (0 or more) or None, not %r' % (renew,))
    return out


def function(name):
    """The setting name as a function: a callable as it is, a dotted path
    imported; None when unset."""
    value = get(name)
    if value is None or callable(value):
        return value
    from django.utils.module_loading import import_string

    return import_string(value)


def renew_interval():
    """SESSION_RENEW_INTERVAL, or SESSION_TTL // 10 when unset."""
    value = get("SESSION_RENEW_INTERVAL")
    return int(get("SESSION_TTL")) // 10 if value is None else int(value)


def _secure(value):
    return (not settings.DEBUG) if value is None else bool(value)


def cookie_secure():
    """Whether the cookie is Secure: COOKIE_SECURE, or when it is None (the
    default), not settings.DEBUG."""
    return _secure(get("COOKIE_SECURE"))


def check():
    """Raise ImproperlyConfigured if the settings are wrong."""
    found = problems()
    if found:
        raise ImproperlyConfigured("; ".join(found))


def cluster_addrs(value=None):
    """REDIS_CLUSTER_ADDRS as a list of (host, port); [] when unset."""
    if value is None:
        value = get("REDIS_CLUSTER_ADDRS")
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError('SSEBRIDGE["REDIS_CLUSTER_ADDRS"]: %r is not host:port' % (item,))
        out.append((host, int(port)))
    return out


def cluster():
    """Whether ssebridge runs on Redis Cluster (REDIS_CLUSTER_ADDRS is set)."""
    return bool(cluster_addrs())


# The Redis client, made on first use from the settings of that moment, and
# made again if a test changes SSEBRIDGE (override_settings).
_lock = threading.Lock()
_client = None


def redis_client():
    """The redis.Redis client (a connection pool) shared by this package; a
    redis.cluster.RedisCluster with REDIS_CLUSTER_ADDRS."""
    global _client
    client = _client
    if client is None:
        import redis

        with _lock:
            if _client is None:
                addrs = cluster_addrs()
                if addrs:
                    from redis.cluster import ClusterNode, RedisCluster

                    nodes = [ClusterNode(host, port) for host, port in addrs]
                    _client = RedisCluster(startup_nodes=nodes, **get("REDIS_OPTIONS"))
                else:
                    _client = redis.Redis.from_url(get("REDIS_URL"), **get("REDIS_OPTIONS"))
            client = _client
    return client


@receiver(setting_changed)
def _reset(setting, **kwargs):
    global _client
    if setting == "SSEBRIDGE":
        with _lock:
            old, _client = _client, None
        if old is not None:
            if hasattr(old, "connection_pool"):
                old.connection_pool.disconnect()
            else:
                old.close()
