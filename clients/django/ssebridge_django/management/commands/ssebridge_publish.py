import json

import redis

from django.core.management.base import BaseCommand, CommandError

from ... import publishing


class Command(BaseCommand):
    help = (
        "Publish an event for ssebridge to push: live (at most once), or with "
        "--durable stored in the channel's history (prints its id)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--channel", required=True, help='"broadcast", "user:<id>" or "room:<name>"')
        parser.add_argument("--event", default="message", help="the event's name (default: message)")
        parser.add_argument("--data", required=True, help="the event's data, as JSON (a string needs quotes: '\"hi\"')")
        parser.add_argument("--durable", action="store_true", help="store it in the history and print its id")
        parser.add_argument("--idempotency-key", help="with --durable: publish at most once under this key (default: a new one)")

    def handle(self, *args, channel, event, data, durable, idempotency_key=None, **options):
        try:
            value = json.loads(data)
        except ValueError as e:
            raise CommandError("--data is not JSON: %s" % e)
        try:
            if durable:
                event_id = publishing.publish_durable(channel, event, value, idempotency_key=idempotency_key)
                self.stdout.write(event_id)
            else:
                n = publishing.publish(channel, event, value)
                self.stdout.write("published live to %d subscriber%s" % (n, "" if n == 1 else "s"))
        except (ValueError, publishing.IdempotencyKeyReused) as e:
            raise CommandError(str(e))
        except redis.exceptions.ConnectionError as e:
            hint = ""
            if durable:
                hint = " (the event may have been published: to retry it at most once, pass --idempotency-key with a key of your own)"
            raise CommandError("Redis unreachable (SSEBRIDGE[\"REDIS_URL\"]): %s%s" % (e, hint))
