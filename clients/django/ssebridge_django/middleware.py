"""The ssebridge session follows Django's login.

    MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        ...
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "ssebridge_django.middleware.SSEBridgeSessionMiddleware",
        ...
    ]

After the view, for every request whose request.user is authenticated, the
browser is made to hold a valid ssebridge session of that user: issued when
it has none (or one of another user, which is revoked: deleted, and its
user's open streams ended), renewed on a sliding TTL, issued again when the
key is gone from Redis. At logout (Django's user_logged_out signal) the
session is deleted, its user's streams ended, and the cookie cleared. It
only looks at request.user and the cookie, so every login path works
(contrib.auth's views, django-allauth, a REST login that calls
django.contrib.auth.login).

Cost. The middleware keeps a note in Django's own session
(request.session["_ssebridge"]): the ssebridge user, a digest of the token
and when it was last renewed. While the cookie and the user match the note
and the renewal is younger than SESSION_RENEW_INTERVAL, a request costs no
Redis command at all. After that, one round trip (EXPIRE, and a GET of the
history's position) renews the key and the cookie; if EXPIRE finds no key
(expired, or deleted by a revocation) one more writes a new session.
Issuing for a login or a user change costs two round trips (the earlier
session taken and the position read; the new one written), a logout two.
Never more than two before the response; on a user change the earlier
user's logout is published once the response has been sent.
"""

import hashlib
import logging
import time

from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

from . import conf
from .publishing import _text, control
from .sessions import _key, _take, clear_cookie, issue, set_cookie, token

log = logging.getLogger("ssebridge_django")

# The middleware's note, in request.session.
NOTE = "_ssebridge"

_now = time.time  # the tests move the clock here


def _digest(t):
    # Only a digest of the token goes into Django's session: a session
    # store (a database, a signed cookie) need not hold a bearer token.
    return hashlib.sha256(t.encode()).hexdigest()[:32]


def user_id(user):
    """The ssebridge user id of a Django user: USER_ID(user), or user.pk
    (an integer as it is, anything else as a string)."""
    fn = conf.function("USER_ID")
    if fn is not None:
        return fn(user)
    pk = user.pk
    return pk if isinstance(pk, int) else str(pk)


def rooms_for(request, user):
    """The rooms of a new session: ROOMS(request, user), or none."""
    fn = conf.function("ROOMS")
    return list(fn(request, user)) if fn is not None else []


def ttl_for(request):
    """SESSION_TTL, but never past the end of Django's own session: an
    ssebridge session outliving it would keep a stream open for a user
    Django no longer knows."""
    ttl = int(conf.get("SESSION_TTL"))
    session = getattr(request, "session", None)
    if session is not None:
        ttl = min(ttl, int(session.get_expiry_age()))
    return max(ttl, 1)


class SSEBridgeSessionMiddleware:
    """Keeps the browser's ssebridge session that of request.user (module
    docstring). Place it after SessionMiddleware (its note is saved in
    Django's session) and AuthenticationMiddleware."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        import redis

        try:
            self.sync(request, response)
        except redis.exceptions.RedisError as e:
            # The page still works; its stream is refused until a later
            # request gets through to Redis (the note is left as it was).
            log.warning("ssebridge session not renewed: Redis: %s", e)
        return response

    def sync(self, request, response):
        if conf.get("COOKIE") in response.cookies:
            return  # the view called login() or logout() itself: its choice stands
        if getattr(request, "_ssebridge_logged_out", False):
            clear_cookie(response)  # the session itself went in the signal
            return
        user = getattr(request, "user", None)
        session = getattr(request, "session", None)
        if user is None or session is None or not user.is_authenticated:
            return
        uid = user_id(user)
        t = token(request)
        note = session.get(NOTE) or {}
        now = int(_now())
        ttl = ttl_for(request)
        if t is not None and note.get("user") == str(uid) and note.get("token") == _digest(t):
            if now - int(note.get("renewed", 0)) < conf.renew_interval():
                return  # fresh: no Redis command
            renewed, position = self.renew(t, ttl)
            if renewed:
                set_cookie(response, t, ttl)
                session[NOTE] = dict(note, renewed=now)
                return
            # The key is gone (expired, or revoked): nothing to revoke, and
            # with the position read alongside, a new session in one more trip.
            new, _ = issue(request, response, uid, rooms_for(request, user), ttl, position=position)
        else:
            # No session, another user's, or one this note does not know: a
            # new one, revoking what the cookie held (and ending its streams
            # when it was another user's).
            new, taken = issue(request, response, uid, rooms_for(request, user), ttl)
            if taken and taken.get("user") is not None and str(taken["user"]) != str(uid):
                _after_response(response, taken["user"])
        session[NOTE] = {"user": str(uid), "token": _digest(new), "renewed": now}

    @staticmethod
    def renew(t, ttl):
        """EXPIRE the session's key: (whether it was there, the history's
        position or None). One round trip; on a single Redis the position
        (for a new session's grants) is read in it too."""
        client = conf.redis_client()
        if conf.cluster():
            return bool(client.expire(_key(t), ttl)), None
        pipe = client.pipeline(transaction=False)
        pipe.expire(_key(t), ttl)
        pipe.get(conf.get("CHANNEL_PREFIX") + "cursor")
        found, cursor = pipe.execute()
        return bool(found), _text(cursor)


def _after_response(response, previous):
    """Publish logout for the previous user once response has been sent
    (Django closes a response after the server wrote it). Its key is already
    deleted; ending its streams before the browser has stored the new
    cookie would have the other tabs of this browser, which ask ssebridge
    whose session the browser holds when their stream ends, find none and
    stop, instead of moving to the new user's (ssebridge.js's onsession)."""

    def publish():
        import redis

        try:
            control("logout", previous)
        except redis.exceptions.RedisError as e:
            log.warning("ssebridge: the earlier user's streams not ended: Redis: %s", e)

    closers = getattr(response, "_resource_closers", None)
    if isinstance(closers, list):
        closers.append(publish)
    else:
        publish()


@receiver(user_logged_out, dispatch_uid="ssebridge_django.middleware.logged_out")
def logged_out(sender, request=None, user=None, **kwargs):
    """At Django's logout: delete the browser's ssebridge session and end
    its user's open streams (as logout() does); the middleware clears the
    cookie on the response."""
    if request is None:
        return
    import redis

    request._ssebridge_logged_out = True
    try:
        taken = _take(token(request))
        if taken and taken.get("user") is not None:
            control("logout", taken["user"])
    except redis.exceptions.RedisError as e:
        # Django's logout goes on; the cookie is still cleared, and the key
        # expires with its TTL.
        log.warning("ssebridge session not revoked at logout: Redis: %s", e)
