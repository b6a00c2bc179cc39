import json

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpResponse
from django.test import RequestFactory

import ssebridge_django as sse

from .base import RedisTestCase


def browser(token=None):
    """A request from a browser that holds token in its ssebridge cookie (or none)."""
    request = RequestFactory().get("/")
    if token is not None:
        request.COOKIES["sse_session"] = token
    return request


class LoginTests(RedisTestCase):
    def test_session_written_with_ttl_and_json(self):
        token = sse.login(browser(), HttpResponse(), "alice", ["lobby", "team-7"])
        self.assertGreaterEqual(len(token), 43)  # secrets.token_urlsafe(32)
        raw = self.redis.get("session:" + token)
        self.assertEqual(json.loads(raw), {"user": "alice", "rooms": ["lobby", "team-7"], "granted": {"lobby": "", "team-7": ""}})
        ttl = self.redis.ttl("session:" + token)
        self.assertTrue(86400 - 5 <= ttl <= 86400, ttl)

    def test_tokens_are_random(self):
        self.assertNotEqual(sse.login(browser(), HttpResponse(), "alice"), sse.login(browser(), HttpResponse(), "alice"))

    def test_integer_user_and_no_rooms(self):
        token = sse.login(browser(), HttpResponse(), 42)
        self.assertEqual(json.loads(self.redis.get("session:" + token)), {"user": 42, "rooms": [], "granted": {}})

    def test_default_cookie_flags(self):
        response = HttpResponse()
        token = sse.login(browser(), response, "alice", ["lobby"])
        c = response.cookies["sse_session"]
        self.assertEqual(c.value, token)
        self.assertTrue(c["httponly"])
        self.assertEqual(c["samesite"], "Lax")
        self.assertTrue(c["secure"])  # DEBUG is off
        self.assertEqual(c["max-age"], 86400)
        self.assertEqual(c["path"], "/")
        self.assertEqual(c["domain"], "")

    def test_configured_cookie_and_prefix(self):
        self.configure(COOKIE="nodejskey", SESSION_PREFIX="s:", SESSION_TTL=60,
                       COOKIE_SECURE=True, COOKIE_SAMESITE="Strict", COOKIE_DOMAIN=".example.com")
        response = HttpResponse()
        token = sse.login(browser(), response, "alice")
        c = response.cookies["nodejskey"]
        self.assertEqual(c.value, token)
        self.assertTrue(c["secure"])
        self.assertTrue(c["httponly"])
        self.assertEqual(c["samesite"], "Strict")
        self.assertEqual(c["domain"], ".example.com")
        self.assertEqual(c["max-age"], 60)
        self.assertTrue(0 < self.redis.ttl("s:" + token) <= 60)
        self.assertIsNone(self.redis.get("session:" + token))

    def test_cookie_secure_follows_debug_unless_set(self):
        for debug, setting, secure in [(False, None, True), (True, None, False),
                                       (True, True, True), (False, False, False)]:
            extra = {} if setting is None else {"COOKIE_SECURE": setting}
            # One override for both: nested ones would restore each other's settings.
            with self.subTest(DEBUG=debug, COOKIE_SECURE=setting), \
                    self.settings(DEBUG=debug, SSEBRIDGE=dict(settings.SSEBRIDGE, **extra)):
                response = HttpResponse()
                sse.login(browser(), response, "alice")
                self.assertEqual(bool(response.cookies["sse_session"]["secure"]), secure)
                sse.logout(browser(response.cookies["sse_session"].value), response)
                self.assertEqual(bool(response.cookies["sse_session"]["secure"]), secure)

    def test_samesite_none_needs_secure(self):
        self.configure(COOKIE_SAMESITE="None", COOKIE_SECURE=False)
        with self.assertRaises(ImproperlyConfigured):
            sse.login(browser(), HttpResponse(), "alice")
        self.assertEqual(self.redis.dbsize(), 0)

    def test_bad_names_refused_before_anything_is_written(self):
        for user, rooms in [("", []), ("a b", []), ("x" * 129, []), (True, []), (None, []),
                            ("alice", ["lob by"]), ("alice", "lobby")]:
            with self.subTest(user=user, rooms=rooms), self.assertRaises(ValueError):
                sse.login(browser(), HttpResponse(), user, rooms)
        self.assertEqual(self.redis.dbsize(), 0)


class RevokeTests(RedisTestCase):
    """A login revokes the session the browser held before: left in Redis
    for its TTL, its token would still open streams of the earlier user."""

    def test_login_revokes_the_browsers_earlier_session(self):
        alice = sse.login(browser(), HttpResponse(), "alice", ["lobby"])
        elsewhere = sse.login(browser(), HttpResponse(), "alice")  # another browser's: kept
        response = HttpResponse()
        bob = sse.login(browser(alice), response, "bob")
        self.assertIsNone(self.redis.get("session:" + alice))
        self.assertEqual(json.loads(self.redis.get("session:" + bob)), {"user": "bob", "rooms": [], "granted": {}})
        self.assertIsNotNone(self.redis.get("session:" + elsewhere))
        self.assertEqual(response.cookies["sse_session"].value, bob)

    def test_login_with_an_unknown_or_no_earlier_session(self):
        for held in (None, "", "gone"):
            with self.subTest(held=held):
                token = sse.login(browser(held), HttpResponse(), "alice")
                self.assertIsNotNone(self.redis.get("session:" + token))

    def test_revoked_under_the_configured_prefix_and_cookie(self):
        self.configure(COOKIE="nodejskey", SESSION_PREFIX="s:")
        first = sse.login(browser(), HttpResponse(), "alice")
        request = RequestFactory().get("/")
        request.COOKIES["nodejskey"] = first
        second = sse.login(request, HttpResponse(), "alice")
        self.assertIsNone(self.redis.get("s:" + first))
        self.assertIsNotNone(self.redis.get("s:" + second))

    def test_the_old_call_is_refused_with_a_reason(self):
        with self.assertRaisesRegex(TypeError, "login\\(request, response, user"):
            sse.login(HttpResponse(), "alice")
        self.assertEqual(self.redis.dbsize(), 0)


class LogoutTests(RedisTestCase):
    def request_with(self, token):
        request = RequestFactory().get("/")
        if token is not None:
            request.COOKIES["sse_session"] = token
        return request

    def test_logout_deletes_clears_and_publishes(self):
        token = sse.login(browser(), HttpResponse(), "alice", ["lobby"])
        control = self.subscribe("sse:control")
        response = HttpResponse()
        self.assertEqual(sse.logout(self.request_with(token), response), "alice")
        self.assertIsNone(self.redis.get("session:" + token))
        c = response.cookies["sse_session"]
        self.assertEqual(c.value, "")
        self.assertEqual(c["max-age"], 0)
        self.assertIn("1970", c["expires"])
        self.assertTrue(c["httponly"])
        self.assertEqual(c["samesite"], "Lax")
        self.assertEqual(self.next_json(control), ("sse:control", {"op": "logout", "user": "alice"}))

    def test_logout_without_ending_streams(self):
        token = sse.login(browser(), HttpResponse(), "alice")
        control = self.subscribe("sse:control")
        sse.logout(self.request_with(token), HttpResponse(), end_streams=False)
        self.assertIsNone(self.redis.get("session:" + token))
        sse.logout_user("marker")
        # The marker is the first message: logout published nothing.
        self.assertEqual(self.next_json(control)[1], {"op": "logout", "user": "marker"})

    def test_logout_without_a_session(self):
        control = self.subscribe("sse:control")
        for token in (None, "unknown-token"):
            response = HttpResponse()
            self.assertIsNone(sse.logout(self.request_with(token), response))
            self.assertEqual(response.cookies["sse_session"]["max-age"], 0)
        sse.logout_user("marker")
        self.assertEqual(self.next_json(control)[1], {"op": "logout", "user": "marker"})

    def test_get_session(self):
        token = sse.login(browser(), HttpResponse(), "alice", ["lobby"])
        self.assertEqual(sse.get_session(self.request_with(token)), {"user": "alice", "rooms": ["lobby"], "granted": {"lobby": ""}})
        self.assertEqual(sse.token(self.request_with(token)), token)
        self.assertIsNone(sse.get_session(self.request_with(None)))
        self.assertIsNone(sse.get_session(self.request_with("nope")))


class SetRoomsTests(RedisTestCase):
    def test_updates_session_keeps_ttl_and_publishes_join_leave(self):
        self.configure(SESSION_TTL=600)
        token = sse.login(browser(), HttpResponse(), "alice", ["lobby", "team-7"])
        request = RequestFactory().get("/")
        request.COOKIES["sse_session"] = token
        control = self.subscribe("sse:control")
        self.assertEqual(sse.set_rooms(request, ["team-7", "team-9"]), ["team-7", "team-9"])
        self.assertEqual(json.loads(self.redis.get("session:" + token)),
                         {"user": "alice", "rooms": ["team-7", "team-9"], "granted": {"team-7": "", "team-9": ""}})
        self.assertTrue(590 <= self.redis.ttl("session:" + token) <= 600)
        self.assertEqual(self.next_json(control)[1], {"op": "join", "user": "alice", "room": "team-9", "since": ""})
        self.assertEqual(self.next_json(control)[1], {"op": "leave", "user": "alice", "room": "lobby"})

    def test_no_session(self):
        request = RequestFactory().get("/")
        self.assertIsNone(sse.set_rooms(request, ["lobby"]))
        request.COOKIES["sse_session"] = "gone"
        self.assertIsNone(sse.set_rooms(request, ["lobby"]))
        self.assertEqual(self.redis.dbsize(), 0)


class UserRuleTests(RedisTestCase):
    """The rule for a user is ssebridge's (wire/session.go parseUser,
    wire/names.go CheckName; TestParseSession has the same rows): a string
    is a name; an integer must fit in 64 bits, signed."""

    ACCEPTED = [42, -5, 0, 2**63 - 1, -(2**63), "9223372036854775808", "a@b.c:d_e-f", "x" * 128]
    REFUSED = [2**63, -(2**63) - 1, 2**64, 1.5, 1e3, True, None, "", "a b", "é", "x" * 129, ["alice"]]

    def test_accepted_everywhere(self):
        control = self.subscribe("sse:control")
        for user in self.ACCEPTED:
            with self.subTest(user=user):
                token = sse.login(browser(), HttpResponse(), user)
                # Stored as given: an integer as a JSON integer, as ssebridge reads it.
                self.assertEqual(self.redis.get("session:" + token).decode(),
                                 '{"user":%s,"rooms":[],"granted":{}}' % json.dumps(user))
                self.assertEqual(sse.user(user), "user:%s" % user)
                sse.logout_user(user)
                self.assertEqual(self.next_json(control)[1], {"op": "logout", "user": str(user)})

    def test_refused_everywhere_before_anything_is_written(self):
        for user in self.REFUSED:
            with self.subTest(user=user):
                with self.assertRaises(ValueError):
                    sse.login(browser(), HttpResponse(), user)
                with self.assertRaises(ValueError):
                    sse.user(user)
                with self.assertRaises(ValueError):
                    sse.logout_user(user)
        self.assertEqual(self.redis.dbsize(), 0)


class GrantTests(RedisTestCase):
    """Rooms are granted at the position Redis's history is at (the value of
    <CHANNEL_PREFIX>cursor): ssebridge never sends a stream a room's events
    from before its grant (docs/protocol.md, "Sessions")."""

    def session(self, token):
        return json.loads(self.redis.get("session:" + token))

    def test_login_grants_the_rooms_now(self):
        no_history = sse.login(browser(), HttpResponse(), "alice", ["lobby"])
        self.assertEqual(self.session(no_history)["granted"], {"lobby": ""})
        self.redis.set("sse:cursor", "e1:100-3")
        token = sse.login(browser(), HttpResponse(), "alice", ["lobby", "team-7"])
        self.assertEqual(self.session(token)["granted"], {"lobby": "e1:100-3", "team-7": "e1:100-3"})

    def test_a_new_login_of_the_same_user_keeps_earlier_grants(self):
        self.redis.set("sse:cursor", "e1:100-0")
        first = sse.login(browser(), HttpResponse(), "alice", ["lobby"])
        self.redis.set("sse:cursor", "e1:200-0")
        again = sse.login(browser(first), HttpResponse(), "alice", ["lobby", "team-7"])
        # lobby was hers already: a tab resuming across the login loses nothing.
        self.assertEqual(self.session(again)["granted"], {"lobby": "e1:100-0", "team-7": "e1:200-0"})
        bob = sse.login(browser(again), HttpResponse(), "bob", ["lobby"])
        self.assertEqual(self.session(bob)["granted"], {"lobby": "e1:200-0"})

    def test_set_rooms_grants_added_rooms_and_joins_with_since(self):
        self.redis.set("sse:cursor", "e1:100-0")
        token = sse.login(browser(), HttpResponse(), "alice", ["lobby", "team-7"])
        self.redis.set("sse:cursor", "e1:300-1")
        control = self.subscribe("sse:control")
        sse.set_rooms(browser(token), ["team-7", "team-9"])
        self.assertEqual(self.session(token)["granted"], {"team-7": "e1:100-0", "team-9": "e1:300-1"})
        self.assertEqual(self.next_json(control)[1], {"op": "join", "user": "alice", "room": "team-9", "since": "e1:300-1"})

    def test_join_carries_since(self):
        self.redis.set("sse:cursor", "e1:400-0")
        control = self.subscribe("sse:control")
        sse.join("alice", "team-7")
        self.assertEqual(self.next_json(control)[1], {"op": "join", "user": "alice", "room": "team-7", "since": "e1:400-0"})
