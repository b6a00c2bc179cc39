import json
import time
import unittest

from django.conf import settings
from django.test import SimpleTestCase

from . import redis_server


class RedisTestCase(SimpleTestCase):
    """A test against the run's real redis-server, emptied before each test."""

    @classmethod
    def setUpClass(cls):
        if redis_server.SERVER is None:
            raise unittest.SkipTest(redis_server.MISSING)
        super().setUpClass()
        cls.redis = redis_server.SERVER.client()
        cls.addClassCleanup(cls.redis.close)

    # What ssebridge writes into <prefix>config when it connects; the
    # publish script refuses to run without it (no marker, no durable event).
    MARKER = "0123456789abcdef0123456789abcdef"

    def setUp(self):
        self.redis.flushall()

    def write_config(self, prefix="sse:"):
        """Write <prefix>config as a running ssebridge would."""
        self.redis.hset(prefix + "config", mapping={"maxlen": 1000, "ttl": 86400, "maxbytes": 65536, "marker": self.MARKER})

    def configure(self, **values):
        """These SSEBRIDGE settings for the rest of the test."""
        override = self.settings(SSEBRIDGE=dict(settings.SSEBRIDGE, **values))
        override.enable()
        self.addCleanup(override.disable)

    def subscribe(self, *channels):
        """A subscriber on channels, ready (confirmed) when this returns."""
        ps = self.redis.pubsub()
        self.addCleanup(ps.close)
        ps.subscribe(*channels)
        for _ in channels:
            msg = ps.get_message(timeout=5)
            self.assertIsNotNone(msg, "no subscription confirmed")
            self.assertEqual(msg["type"], "subscribe")
        return ps

    def next_message(self, ps, timeout=5):
        """The next published message on ps: (channel, data), awaited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = ps.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if msg is not None and msg["type"] == "message":
                return msg["channel"].decode(), msg["data"]
        self.fail("nothing published within %ss" % timeout)

    def next_json(self, ps):
        channel, data = self.next_message(ps)
        return channel, json.loads(data)
