"""Django's side of ssebridge (https://github.com/ssebridge/ssebridge).

ssebridge pushes events from Redis to browsers over Server-Sent Events. This
package writes what ssebridge reads: sessions and their cookie, events (live
or durable) and control messages.

The ssebridge session follows Django's login with the middleware
(ssebridge_django.middleware.SSEBridgeSessionMiddleware, after
AuthenticationMiddleware; SSEBRIDGE["ROOMS"] names the rooms of a new
session). Without it, by hand (the low-level API):

    import ssebridge_django as sse

    def signin(request):
        ...                                           # your own authentication
        response = redirect("home")
        sse.login(request, response, user.username, rooms=["lobby"])
        return response

    def signout(request):
        response = redirect("signin")
        sse.logout(request, response)
        return response

    sse.publish(sse.room("lobby"), "chat", {"from": "alice", "text": "hi"})         # live
    event_id = sse.publish_durable(sse.user("bob"), "dm", {"text": "psst"})         # durable
    sse.set_rooms(request, ["lobby", "team-7"])                                     # session + join
    sse.room_presence("lobby")  # {"room": "lobby", "users": {"alice": 2}, "count": {...}}

Settings: one dict, SSEBRIDGE, every key optional (ssebridge_django.conf.DEFAULTS).
Add "ssebridge_django" to INSTALLED_APPS for the template tags
({% load ssebridge %}), the ssebridge_publish command and the settings check.
"""

from .conf import redis_client
from .publishing import (
    BROADCAST,
    SCRIPT_SHA,
    IdempotencyKeyReused,
    join,
    leave,
    logout_user,
    new_idempotency_key,
    publish,
    publish_durable,
    publish_durable_retrying,
    room,
    user,
)
from .presence import online, room_presence, user_presence
from .sessions import get_session, login, logout, set_rooms, token

# One version for ssebridge and this package: the Go module's
# internal/version.Version (docs/RELEASING.md in the repository).
__version__ = "0.3.0"

__all__ = [
    "BROADCAST",
    "IdempotencyKeyReused",
    "SCRIPT_SHA",
    "get_session",
    "join",
    "leave",
    "login",
    "logout",
    "logout_user",
    "new_idempotency_key",
    "online",
    "publish",
    "publish_durable",
    "publish_durable_retrying",
    "redis_client",
    "room",
    "room_presence",
    "set_rooms",
    "token",
    "user",
    "user_presence",
]
