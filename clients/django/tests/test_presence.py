import os
import unittest

import ssebridge_django as sse

from .base import RedisTestCase

# ssebridge's own script, from the repository: what an instance runs to
# write its share of a room's presence (store/presence.lua).
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "store", "presence.lua")


class PresenceTests(RedisTestCase):
    def setUp(self):
        super().setUp()
        if not os.path.exists(SCRIPT):
            raise unittest.SkipTest("store/presence.lua not found beside the package (run from the repository)")
        with open(SCRIPT, "rb") as f:
            self.script = self.redis.register_script(f.read())

    def share(self, instance, room, user, streams):
        """Set an instance's share as ssebridge does ("sse:" prefix, one Redis)."""
        k = "sse:presence:"
        self.script(
            keys=[k + "names:" + room, k + "counts:" + room, k + "by:" + room, k + "streams:" + room],
            args=[instance, "set", "", "", room, user, streams],
        )
        # The user's index, as ssebridge's user script writes it:
        # <instance>:<room> -> streams, room empty for all their streams.
        self.redis.hset("sse:presence:user:" + user, instance + ":" + room, streams)
        self.redis.hset("sse:presence:user:" + user, instance + ":", streams)

    def test_room_and_user(self):
        a, b = "a" * 16, "b" * 16
        self.share(a, "lobby", "alice", 2)
        self.share(b, "lobby", "alice", 1)
        self.share(b, "lobby", "bob", 1)
        self.assertEqual(
            sse.room_presence("lobby"),
            {"room": "lobby", "users": {"alice": 3, "bob": 1}, "count": {"users": 2, "streams": 4}},
        )
        self.assertEqual(
            sse.room_presence("lobby", limit=1),
            {"room": "lobby", "users": {"alice": 3}, "count": {"users": 2, "streams": 4}, "next": "alice"},
        )
        self.assertEqual(sse.room_presence("lobby", after="alice", limit=1)["users"], {"bob": 1})
        self.assertEqual(sse.room_presence("lobby", limit=0)["users"], {})
        self.assertEqual(sse.room_presence("empty"), {"room": "empty", "users": {}, "count": {"users": 0, "streams": 0}})
        self.assertEqual(sse.user_presence("alice"), {"user": "alice", "streams": 3, "rooms": {"lobby": 3}})
        self.assertTrue(sse.online("bob"))
        self.assertFalse(sse.online("carol"))

    def test_bad_input(self):
        for call in [
            lambda: sse.room_presence("a b"),
            lambda: sse.room_presence("lobby", limit=-1),
            lambda: sse.room_presence("lobby", after="x y"),
            lambda: sse.user_presence(""),
        ]:
            with self.assertRaises(ValueError):
                call()
