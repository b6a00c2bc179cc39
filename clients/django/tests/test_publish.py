import datetime
import json
import re

import ssebridge_django as sse
from ssebridge_django import conf, publishing

from .base import RedisTestCase

ID = re.compile(r"\A[0-9a-f]+:(\d+)-(\d+)\Z")


class ChannelTests(RedisTestCase):
    def test_helpers(self):
        self.assertEqual(sse.user("alice"), "user:alice")
        self.assertEqual(sse.user(42), "user:42")
        self.assertEqual(sse.room("team-7"), "room:team-7")
        self.assertEqual(sse.BROADCAST, "broadcast")
        for bad in ["", "a b", "x" * 129, "é", "a\nb"]:
            with self.subTest(bad=bad):
                with self.assertRaises(ValueError):
                    sse.user(bad)
                with self.assertRaises(ValueError):
                    sse.room(bad)

    def test_bad_channel_or_event_refused(self):
        for channel in ["lobby", "room:", "room:a b", "user:", "control", "sse:room:lobby"]:
            with self.subTest(channel=channel), self.assertRaises(ValueError):
                sse.publish(channel, "chat", {})
        for event in ["", "a\nb", "a\rb", None]:
            with self.subTest(event=event), self.assertRaises(ValueError):
                sse.publish("broadcast", event, {})


class LiveTests(RedisTestCase):
    def test_reaches_a_subscriber(self):
        ps = self.subscribe("sse:room:lobby")
        n = sse.publish(sse.room("lobby"), "chat", {"from": "bob", "text": "hi ☃"})
        self.assertEqual(n, 1)
        channel, data = self.next_message(ps)
        self.assertEqual(channel, "sse:room:lobby")
        self.assertEqual(json.loads(data), {"event": "chat", "data": {"from": "bob", "text": "hi ☃"}})
        self.assertEqual(self.redis.keys("*"), [], "a live publish stores nothing")

    def test_django_types_and_prefix(self):
        self.configure(CHANNEL_PREFIX="app1:")
        ps = self.subscribe("app1:broadcast")
        sse.publish(sse.BROADCAST, "tick", {"at": datetime.date(2026, 11, 26)})
        self.assertEqual(json.loads(self.next_message(ps)[1]), {"event": "tick", "data": {"at": "2026-11-26"}})


class DurableTests(RedisTestCase):
    def setUp(self):
        super().setUp()
        self.write_config()

    def test_refused_before_ssebridge_configured(self):
        self.redis.delete("sse:config")
        with self.assertRaisesRegex(Exception, "start ssebridge"):
            sse.publish_durable(sse.room("lobby"), "chat", {"text": "one"})

    def test_stored_in_history_published_and_id_returned(self):
        ps = self.subscribe("sse:room:lobby")
        first = sse.publish_durable(sse.room("lobby"), "chat", {"text": "one"})
        second = sse.publish_durable("room:lobby", "chat", {"text": "two"})
        for event_id in (first, second):
            self.assertRegex(event_id, ID)
        m1, m2 = ID.match(first), ID.match(second)
        self.assertLess((int(m1[1]), int(m1[2])), (int(m2[1]), int(m2[2])))
        self.assertEqual(first.split(":")[0], second.split(":")[0], "one epoch")

        history = self.redis.xrange("sse:{room:lobby}:history")
        self.assertEqual([entry_id.decode() for entry_id, _ in history], [first.split(":", 1)[1], second.split(":", 1)[1]])
        self.assertEqual(json.loads(history[0][1][b"e"]), {"event": "chat", "data": {"text": "one"}})
        self.assertEqual(self.redis.get("sse:cursor").decode(), second)

        # Live too, as ssebridge reads it: NUL, the deployment's marker, a
        # space, the id, LF, the envelope.
        _, data = self.next_message(ps)
        head, envelope = data.split(b"\n", 1)
        self.assertEqual(head, b"\0" + self.MARKER.encode() + b" " + first.encode())
        self.assertEqual(json.loads(envelope), {"event": "chat", "data": {"text": "one"}})

    def test_evalsha_then_eval_on_noscript(self):
        self.redis.script_flush()
        self.redis.config_resetstat()
        sse.publish_durable(sse.user("bob"), "dm", "psst")   # NOSCRIPT, then EVAL
        self.assertEqual(self.redis.script_exists(publishing.SCRIPT_SHA), [True])
        sse.publish_durable(sse.user("bob"), "dm", "again")  # EVALSHA only
        stats = self.redis.info("commandstats")
        self.assertEqual(stats["cmdstat_eval"]["calls"], 1)
        self.assertEqual(stats["cmdstat_evalsha"]["calls"] - stats["cmdstat_evalsha"].get("failed_calls", 0), 1)
        self.assertEqual(self.redis.xlen("sse:{user:bob}:history"), 2)

    def test_sha_is_what_redis_computes(self):
        self.assertEqual(self.redis.script_load(publishing.SCRIPT), publishing.SCRIPT_SHA)

    def test_idempotency_key(self):
        ps = self.subscribe("sse:room:lobby")
        first = sse.publish_durable(sse.room("lobby"), "chat", {"text": "one"}, idempotency_key="order-17")
        again = sse.publish_durable(sse.room("lobby"), "chat", {"text": "one"}, idempotency_key="order-17")
        self.assertEqual(again, first, "the repeat answers the first id")
        with self.assertRaisesRegex(sse.IdempotencyKeyReused, "another channel or envelope"):
            sse.publish_durable(sse.room("lobby"), "chat", {"text": "two"}, idempotency_key="order-17")
        self.assertEqual(self.redis.xlen("sse:{room:lobby}:history"), 1)
        # One PUBLISH: the next message on the channel is a raw end mark.
        self.redis.publish("sse:room:lobby", "end")
        self.assertTrue(self.next_message(ps)[1].startswith(b"\0"))
        self.assertEqual(self.next_message(ps)[1], b"end")
        for bad in ["", "a b", "x" * 256, "clé", 17]:
            with self.subTest(key=bad), self.assertRaises(ValueError):
                sse.publish_durable(sse.room("lobby"), "chat", {}, idempotency_key=bad)

    def test_a_new_key_per_call_by_default(self):
        sse.publish_durable(sse.room("lobby"), "chat", {"text": "same"})
        sse.publish_durable(sse.room("lobby"), "chat", {"text": "same"})
        self.assertEqual(self.redis.xlen("sse:{room:lobby}:history"), 2, "two calls, two events")
        keys = sorted(k.decode() for k in self.redis.keys("sse:idem:*"))
        self.assertEqual(len(keys), 2)
        for k in keys:
            self.assertRegex(k, r"\Asse:idem:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

    def test_retrying_publishes_once(self):
        """The first attempt runs the script and then loses its connection,
        as a reset between the script and its reply does: the retry, with
        the same key, answers the first id and publishes nothing more."""
        import redis
        from unittest import mock

        client = conf.redis_client()
        real = client.evalsha
        keys = []

        def lost_reply(sha, numkeys, *args):
            keys.append(args[-1])
            result = real(sha, numkeys, *args)
            if len(keys) == 1:
                raise redis.exceptions.ConnectionError("Connection reset by peer")
            return result

        with mock.patch.object(client, "evalsha", side_effect=lost_reply):
            with self.assertRaises(redis.exceptions.ConnectionError):
                sse.publish_durable(sse.room("lobby"), "chat", {"text": "one"})  # a new key each call
            self.assertEqual(self.redis.xlen("sse:{room:lobby}:history"), 1, "the failed call did publish")
            keys.clear()
            event_id = sse.publish_durable_retrying(sse.room("lobby"), "chat", {"text": "two"}, delay=0)
        self.assertEqual(len(keys), 2)
        self.assertEqual(keys[0], keys[1], "one key for every attempt")
        self.assertEqual(self.redis.xlen("sse:{room:lobby}:history"), 2, "one event for the retried call")
        self.assertEqual(self.redis.xrange("sse:{room:lobby}:history")[-1][0].decode(), event_id.split(":", 1)[1])

    def test_retrying_gives_up(self):
        import redis
        from unittest import mock

        client = conf.redis_client()
        with mock.patch.object(client, "evalsha", side_effect=redis.exceptions.TimeoutError("timed out")) as evalsha:
            with self.assertRaises(redis.exceptions.TimeoutError):
                sse.publish_durable_retrying(sse.room("lobby"), "chat", {}, attempts=3, delay=0)
        self.assertEqual(evalsha.call_count, 3)


class ControlTests(RedisTestCase):
    def test_messages(self):
        ps = self.subscribe("sse:control")
        sse.join("alice", "team-7")
        sse.leave(42, "lobby")
        sse.logout_user("alice")
        raw = [self.next_message(ps)[1] for _ in range(3)]
        self.assertEqual(raw, [
            b'{"op":"join","user":"alice","room":"team-7","since":""}',
            b'{"op":"leave","user":"42","room":"lobby"}',
            b'{"op":"logout","user":"alice"}',
        ])

    def test_bad_names_refused(self):
        with self.assertRaises(ValueError):
            sse.join("alice", "no room")
        with self.assertRaises(ValueError):
            sse.logout_user("")
