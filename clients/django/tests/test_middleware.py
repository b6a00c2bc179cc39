import json
import time
from contextlib import contextmanager
from unittest import mock

import redis
from importlib import import_module

from django.conf import settings
from django.contrib.auth.models import User
from django.core import checks
from django.http import HttpResponse
from django.test import RequestFactory, TestCase

import ssebridge_django as sse
from ssebridge_django import middleware

from .base import RedisTestCase


@contextmanager
def round_trips():
    """Counts the package's Redis round trips: every request to the server,
    a pipeline being one, goes through Connection.send_packed_command."""
    calls = []
    real = redis.connection.Connection.send_packed_command

    def counted(self, command, check_health=True):
        calls.append(command)
        return real(self, command, check_health)

    with mock.patch.object(redis.connection.Connection, "send_packed_command", counted):
        yield calls


class MiddlewareTests(RedisTestCase, TestCase):
    """SSEBridgeSessionMiddleware with contrib.auth, the test client and the
    run's real redis-server (tests/settings.py has the middleware)."""

    def setUp(self):
        super().setUp()
        self.configure(ROOMS="tests.urls.rooms")
        self.alice = User.objects.create_user("alice", password="x")
        self.bob = User.objects.create_user("bob", password="x")

    def server_commands(self):
        """Commands the server has run, but INFO itself (from INFO commandstats)."""
        stats = self.redis.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")

    def cookie(self, response):
        return response.cookies.get("sse_session")

    def session(self, token):
        raw = self.redis.get("session:" + token)
        return json.loads(raw) if raw is not None else None

    def log_in(self, name):
        response = self.client.get("/login/" + name)
        self.assertEqual(response.status_code, 200)
        c = self.cookie(response)
        self.assertIsNotNone(c, "no ssebridge cookie on the login's response")
        return c.value

    @contextmanager
    def later(self, seconds):
        """The middleware's clock, seconds ahead."""
        now = time.time() + seconds
        with mock.patch.object(middleware, "_now", lambda: now):
            yield

    def test_login_issues_a_session_with_the_rooms_and_the_cookie(self):
        token = self.log_in("alice")
        self.assertEqual(self.session(token), {"user": self.alice.pk, "rooms": ["lobby", "u-alice"],
                                               "granted": {"lobby": "", "u-alice": ""}})
        self.assertTrue(86400 - 5 <= self.redis.ttl("session:" + token) <= 86400)
        c = self.client.cookies["sse_session"]
        self.assertTrue(c["httponly"])
        self.assertEqual(c["samesite"], "Lax")
        self.assertTrue(c["secure"])  # DEBUG is off
        self.assertEqual(c["path"], "/")
        self.assertEqual(c["max-age"], 86400)

    def test_anonymous_costs_nothing_and_sets_nothing(self):
        before = self.server_commands()
        with round_trips() as calls:
            response = self.client.get("/")
        self.assertEqual(calls, [])
        self.assertEqual(self.server_commands(), before)
        self.assertIsNone(self.cookie(response))

    def test_fresh_costs_no_redis_command(self):
        self.log_in("alice")
        before = self.server_commands()
        with round_trips() as calls:
            for _ in range(3):
                response = self.client.get("/")
                self.assertIsNone(self.cookie(response))
        self.assertEqual(calls, [])
        self.assertEqual(self.server_commands(), before)

    def test_stale_renews_in_one_round_trip(self):
        token = self.log_in("alice")
        self.redis.expire("session:" + token, 100)
        with self.later(8641), round_trips() as calls:  # past SESSION_TTL // 10
            response = self.client.get("/")
        self.assertEqual(len(calls), 1)
        self.assertEqual(self.cookie(response).value, token)
        self.assertEqual(self.cookie(response)["max-age"], 86400)
        self.assertTrue(86400 - 5 <= self.redis.ttl("session:" + token) <= 86400)
        # Renewed: fresh again from then on.
        with self.later(8642), round_trips() as calls:
            self.client.get("/")
        self.assertEqual(calls, [])

    def test_a_key_gone_is_issued_again(self):
        token = self.log_in("alice")
        self.redis.delete("session:" + token)  # expired, or revoked elsewhere
        self.redis.set("sse:cursor", "e1:100-0")
        with self.later(8641), round_trips() as calls:
            response = self.client.get("/")
        self.assertEqual(len(calls), 2)  # EXPIRE (and the position) finds nothing; SET
        new = self.cookie(response).value
        self.assertNotEqual(new, token)
        self.assertEqual(self.session(new), {"user": self.alice.pk, "rooms": ["lobby", "u-alice"],
                                             "granted": {"lobby": "e1:100-0", "u-alice": "e1:100-0"}})

    def test_renew_interval_setting(self):
        self.configure(ROOMS="tests.urls.rooms", SESSION_RENEW_INTERVAL=0)
        token = self.log_in("alice")
        with round_trips() as calls:
            self.client.get("/")
        self.assertEqual(len(calls), 1)
        self.assertIn(b"EXPIRE", calls[0] if isinstance(calls[0], bytes) else b"".join(calls[0]))
        self.assertIsNotNone(self.session(token))

    def test_user_switch_revokes_and_ends_the_old_users_streams(self):
        old = self.log_in("alice")
        control = self.subscribe("sse:control")
        with round_trips() as calls:
            new = self.log_in("bob")  # contrib.auth's login as another user: no logout on the way
        # Take + position, write; then, the response sent, alice's logout.
        self.assertEqual(len(calls), 3)
        self.assertNotEqual(new, old)
        self.assertIsNone(self.session(old))
        self.assertEqual(self.session(new)["user"], self.bob.pk)
        self.assertEqual(self.next_json(control), ("sse:control", {"op": "logout", "user": str(self.alice.pk)}))

    def test_the_earlier_users_logout_waits_for_the_response(self):
        # Published before the browser has the new cookie, the logout would
        # have this browser's other tabs find no session and stop, instead
        # of moving to the new user's.
        old = self.log_in("alice")
        control = self.subscribe("sse:control")
        request = RequestFactory().get("/")
        request.COOKIES["sse_session"] = old
        request.user = self.bob
        request.session = import_module(settings.SESSION_ENGINE).SessionStore()
        response = HttpResponse()
        middleware.SSEBridgeSessionMiddleware(lambda r: response)(request)
        self.assertIsNone(self.session(old), "revoked at once")
        sse.logout_user("marker")
        self.assertEqual(self.next_json(control)[1], {"op": "logout", "user": "marker"})
        response.close()  # what the server does once it has sent it
        self.assertEqual(self.next_json(control)[1], {"op": "logout", "user": str(self.alice.pk)})

    def test_logout_deletes_publishes_and_clears_the_cookie(self):
        token = self.log_in("alice")
        control = self.subscribe("sse:control")
        response = self.client.get("/logout")
        self.assertIsNone(self.session(token))
        c = self.cookie(response)
        self.assertEqual(c.value, "")
        self.assertEqual(c["max-age"], 0)
        self.assertEqual(c["path"], "/")
        self.assertEqual(self.next_json(control)[1], {"op": "logout", "user": str(self.alice.pk)})
        # Anonymous from then on: nothing more.
        with round_trips() as calls:
            self.assertIsNone(self.cookie(self.client.get("/")))
        self.assertEqual(calls, [])

    def test_a_session_held_before_the_package_is_adopted(self):
        # Logged in to Django before the middleware existed: no note, no
        # cookie. The next request issues one.
        self.client.force_login(self.alice)
        response = self.client.get("/")
        self.assertEqual(self.session(self.cookie(response).value)["user"], self.alice.pk)

    def test_a_hand_made_session_of_the_same_user_is_replaced_keeping_grants(self):
        # The project called login() by hand before it had the middleware.
        self.client.force_login(self.alice)
        self.redis.set("sse:cursor", "e1:100-0")
        request = RequestFactory().get("/")
        old = sse.login(request, HttpResponse(), self.alice.pk, ["lobby"])
        self.client.cookies["sse_session"] = old
        self.redis.set("sse:cursor", "e1:200-0")
        control = self.subscribe("sse:control")
        new = self.cookie(self.client.get("/")).value
        self.assertIsNone(self.session(old))
        # lobby keeps its grant (a resuming tab loses nothing); the new room is granted now.
        self.assertEqual(self.session(new)["granted"], {"lobby": "e1:100-0", "u-alice": "e1:200-0"})
        sse.logout_user("marker")  # the first message: no logout for alice
        self.assertEqual(self.next_json(control)[1], {"op": "logout", "user": "marker"})

    def test_no_rooms_setting_no_rooms(self):
        self.configure(ROOMS=None)
        self.assertEqual(self.session(self.log_in("alice"))["rooms"], [])

    def test_ttl_never_past_djangos_session(self):
        self.log_in("alice")
        self.client.get("/short")  # sets a 300 s expiry; the note is fresh, nothing renewed yet
        with self.later(8641):
            response = self.client.get("/")
        c = self.cookie(response)
        self.assertLessEqual(c["max-age"], 300)
        self.assertLessEqual(self.redis.ttl("session:" + c.value), 300)

    def test_cookie_attributes_from_the_settings(self):
        self.configure(COOKIE_DOMAIN=".example.com", COOKIE_SAMESITE="Strict", COOKIE_PATH="/app", COOKIE_SECURE=False)
        self.log_in("alice")
        c = self.client.cookies["sse_session"]
        self.assertEqual((c["domain"], c["samesite"], c["path"], c["secure"]), (".example.com", "Strict", "/app", ""))
        response = self.client.get("/logout")
        c = self.cookie(response)
        self.assertEqual((c["domain"], c["path"]), (".example.com", "/app"))

    def test_a_view_that_sets_the_cookie_itself_wins(self):
        self.log_in("alice")
        response = self.client.get("/manual")
        token = self.cookie(response).value
        self.assertEqual(self.session(token)["user"], "someone-else")

    def test_user_id_setting(self):
        self.configure(USER_ID=lambda user: user.get_username())
        token = self.log_in("alice")
        self.assertEqual(self.session(token)["user"], "alice")

    def test_redis_down_leaves_the_page_working(self):
        self.log_in("alice")
        self.configure(REDIS_URL="redis://127.0.0.1:1/0", SESSION_RENEW_INTERVAL=0)
        with self.assertLogs("ssebridge_django", "WARNING"):
            self.assertEqual(self.client.get("/").status_code, 200)

    def test_settings_checked(self):
        self.configure(ROOMS=42, SESSION_RENEW_INTERVAL=-1)
        msgs = [m.msg for m in checks.run_checks() if m.id == "ssebridge.E001"]
        self.assertEqual(len(msgs), 2, msgs)
