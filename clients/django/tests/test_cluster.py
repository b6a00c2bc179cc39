"""The package on Redis Cluster (ssebridge's REDIS_CLUSTER_ADDRS): partitions
as ssebridge computes them, live, durable and control messages on sharded
pub/sub, sessions without MULTI. Against a real three-master cluster."""

import json
import os
import re
import shutil
import time
import unittest

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import SimpleTestCase

import ssebridge_django as sse
from ssebridge_django import conf, publishing, sessions

from . import redis_cluster

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))

# The same table as wire/vector_test.go's partitionTable: backends and
# ssebridge must agree on every channel's partition.
PARTITIONS = [
    ("broadcast", 5, 6), ("control", 11, 2), ("user:alice", 6, 0), ("user:42", 6, 4),
    ("room:lobby", 5, 6), ("room:team-7", 15, 5), ("room:r0", 15, 5), ("user:u9", 10, 1),
]

POSITION = re.compile(r"\A[0-9a-f]+:(\d+)-(\d+)\Z")
MARKER = "0123456789abcdef0123456789abcdef"


class PartitionTests(SimpleTestCase):
    def test_same_as_ssebridge(self):
        for channel, p16, p7 in PARTITIONS:
            with self.subTest(channel=channel):
                self.assertEqual(publishing.partition(channel, 16), p16)
                self.assertEqual(publishing.partition(channel, 7), p7)

    def test_script_identical_to_the_repository_one(self):
        with open(os.path.join(REPO, "store", "cluster_publish.lua"), "rb") as f:
            repo = f.read()
        self.assertEqual(publishing.CLUSTER_SCRIPT, repo,
                         "clients/django/ssebridge_django/cluster_publish.lua differs from store/cluster_publish.lua: "
                         "cp store/cluster_publish.lua clients/django/ssebridge_django/")


@unittest.skipIf(shutil.which("redis-server") is None or shutil.which("redis-cli") is None, "needs redis-server and redis-cli")
class ClusterTests(SimpleTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.cluster = redis_cluster.Cluster().start()
        cls.addClassCleanup(cls.cluster.stop)

    def setUp(self):
        override = self.settings(SSEBRIDGE=dict(settings.SSEBRIDGE, REDIS_CLUSTER_ADDRS=self.cluster.addrs))
        override.enable()
        self.addCleanup(override.disable)
        self.client = conf.redis_client()
        for k in range(16):
            # What every ssebridge writes into each partition when it connects:
            # its config and its position (the script refuses a partition
            # without them, as a node may be while its slot migrates).
            self.client.hset("sse:{p%d}:config" % k, mapping={
                "maxlen": 1000, "ttl": 86400, "maxbytes": 65536, "marker": MARKER, "partitions": 16})
            self.client.set("sse:{p%d}:cursor" % k, "19a2b3c:0", nx=True)

    def ssubscribe(self, channel):
        """A subscriber on channel's shard channel, at its master, confirmed."""
        shard = "sse:{p%d}:%s" % (publishing.partition(channel, 16), channel)
        node = self.cluster.node_of(shard)
        self.addCleanup(node.close)
        ps = node.pubsub()
        self.addCleanup(ps.close)
        # redis-py 4.3 has no ssubscribe, and reads nothing until the PubSub
        # has a channel of its own: one plain channel first, then SSUBSCRIBE.
        ps.subscribe("unused")
        self.assertEqual(ps.get_message(timeout=5)["type"], "subscribe")
        ps.execute_command("SSUBSCRIBE", shard)
        msg = ps.get_message(timeout=5)
        self.assertEqual(msg["type"], "ssubscribe")
        return ps

    def next_message(self, ps, timeout=5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = ps.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if msg is not None and msg["type"] == "smessage":
                return msg["data"]
        self.fail("nothing published within %ss" % timeout)

    def test_live(self):
        ps = self.ssubscribe("room:lobby")
        self.assertEqual(sse.publish(sse.room("lobby"), "chat", {"text": "hi"}), 1)
        self.assertEqual(json.loads(self.next_message(ps)), {"event": "chat", "data": {"text": "hi"}})

    def test_durable(self):
        ps = self.ssubscribe("room:team-7")
        pos = sse.publish_durable(sse.room("team-7"), "chat", {"text": "one"})
        self.assertRegex(pos, POSITION)
        frame = self.next_message(ps)
        self.assertEqual(frame, b"\0" + MARKER.encode() + b" " + pos.encode() + b'\n{"event":"chat","data":{"text":"one"}}')
        entries = self.client.xrange("sse:{p15}:room:team-7:history")
        self.assertEqual(len(entries), 1)
        n, ms = POSITION.match(pos).groups()
        self.assertEqual(entries[0][0].decode(), "%s-%s" % (n, ms))
        second = sse.publish_durable(sse.room("team-7"), "chat", {"text": "two"})
        # A position is a term and a count (docs/CLUSTER.md, "Position
        # scheme"): the next event of the partition takes the next count.
        self.assertEqual(int(POSITION.match(second).group(1)), int(n) + 1)

    def test_durable_after_script_flush_logs_nothing(self):
        # A node without the script cached (a restart, a failover) is sent
        # it with EVAL; redis-py's log of the NoScriptError it handled is
        # filtered out, and nothing else is logged.
        for node in self.client.get_primaries():
            self.client.get_redis_connection(node).script_flush()
        with self.assertNoLogs("redis.cluster", "ERROR"):
            pos = sse.publish_durable(sse.room("flushed"), "chat", {"text": "one"})
        self.assertRegex(pos, POSITION)

    def test_durable_idempotency_key(self):
        channel = sse.room("idem")  # of no other test: the cluster is the class's
        tag = "sse:{p%d}:" % publishing.partition(channel, 16)
        first = sse.publish_durable(channel, "chat", {"text": "one"}, idempotency_key="order-17")
        again = sse.publish_durable(channel, "chat", {"text": "one"}, idempotency_key="order-17")
        self.assertEqual(again, first)
        # redis-py's cluster client logs the error reply (with its
        # traceback) before it raises it: the log is captured here.
        with self.assertRaises(sse.IdempotencyKeyReused), self.assertLogs("redis.cluster", "ERROR"):
            sse.publish_durable(channel, "chat", {"text": "two"}, idempotency_key="order-17")
        self.assertEqual(self.client.xlen(tag + channel + ":history"), 1)
        self.assertEqual(self.client.exists(tag + "idem:order-17"), 1, "in the partition's slot")

    def test_durable_with_other_partitions_refused(self):
        override = self.settings(SSEBRIDGE=dict(settings.SSEBRIDGE, REDIS_CLUSTER_ADDRS=self.cluster.addrs, CLUSTER_PARTITIONS=8))
        override.enable()
        self.addCleanup(override.disable)
        with self.assertRaisesRegex(Exception, "partitions"), self.assertLogs("redis.cluster", "ERROR"):
            sse.publish_durable(sse.room("x"), "chat", {})

    def test_control(self):
        ps = self.ssubscribe("control")
        sse.join("alice", "team-7")
        # Granted at the position of the room's partition.
        since = self.client.get(sse.publishing._tag("room:team-7") + "cursor")
        since = since.decode() if since is not None else ""
        self.assertEqual(json.loads(self.next_message(ps)), {"op": "join", "user": "alice", "room": "team-7", "since": since})
        sse.leave("alice", "team-7")
        self.assertEqual(json.loads(self.next_message(ps)), {"op": "leave", "user": "alice", "room": "team-7"})
        sse.logout_user("alice")
        self.assertEqual(json.loads(self.next_message(ps)), {"op": "logout", "user": "alice"})

    def test_sessions(self):
        ps = self.ssubscribe("control")
        response = HttpResponse()
        token = sse.login(HttpRequest(), response, "alice", rooms=["lobby"])
        request = HttpRequest()
        request.COOKIES[conf.get("COOKIE")] = token
        self.assertEqual(sse.set_rooms(request, ["team-7"]), ["team-7"])
        since = self.client.get(sse.publishing._tag("room:team-7") + "cursor")
        since = since.decode() if since is not None else ""
        self.assertEqual(json.loads(self.next_message(ps)), {"op": "join", "user": "alice", "room": "team-7", "since": since})
        self.assertEqual(json.loads(self.client.get("session:" + token))["granted"], {"team-7": since})
        self.assertEqual(json.loads(self.next_message(ps)), {"op": "leave", "user": "alice", "room": "lobby"})
        self.assertEqual(json.loads(self.client.get("session:" + token))["rooms"], ["team-7"])
        self.assertGreater(self.client.ttl("session:" + token), 0)
        self.assertEqual(sse.logout(request, HttpResponse(), end_streams=True), "alice")
        self.assertIsNone(self.client.get("session:" + token))
        self.assertEqual(json.loads(self.next_message(ps)), {"op": "logout", "user": "alice"})

    def test_login_revokes_the_earlier_session(self):
        first = sse.login(HttpRequest(), HttpResponse(), "alice")
        request = HttpRequest()
        request.COOKIES[conf.get("COOKIE")] = first
        second = sse.login(request, HttpResponse(), "bob")
        self.assertIsNone(self.client.get("session:" + first))
        self.assertEqual(json.loads(self.client.get("session:" + second))["user"], "bob")
