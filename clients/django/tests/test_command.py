import io
import json

from django.core.management import CommandError, call_command

from .base import RedisTestCase
from .test_publish import ID


class PublishCommandTests(RedisTestCase):
    def run_command(self, *args):
        out = io.StringIO()
        call_command("ssebridge_publish", *args, stdout=out)
        return out.getvalue().strip()

    def test_durable(self):
        self.write_config()
        event_id = self.run_command("--channel", "room:lobby", "--event", "chat", "--data", '{"text":"hi"}', "--durable")
        self.assertRegex(event_id, ID)
        [(entry_id, fields)] = self.redis.xrange("sse:{room:lobby}:history")
        self.assertEqual(entry_id.decode(), event_id.split(":", 1)[1])
        self.assertEqual(json.loads(fields[b"e"]), {"event": "chat", "data": {"text": "hi"}})

    def test_live(self):
        ps = self.subscribe("sse:user:bob")
        self.assertEqual(self.run_command("--channel", "user:bob", "--data", '"psst"'), "published live to 1 subscriber")
        self.assertEqual(json.loads(self.next_message(ps)[1]), {"event": "message", "data": "psst"})

    def test_errors(self):
        with self.assertRaisesMessage(CommandError, "--data is not JSON"):
            self.run_command("--channel", "broadcast", "--data", "{oops")
        with self.assertRaisesMessage(CommandError, "channel 'lobby'"):
            self.run_command("--channel", "lobby", "--data", "{}")
        self.assertEqual(self.redis.dbsize(), 0)
