from django.conf import settings
from django.template import Context, Template
from django.test import RequestFactory, SimpleTestCase, override_settings

from ssebridge_django.context_processors import ssebridge


def render(source, **context):
    return Template("{% load ssebridge %}" + source).render(Context(context))


class TemplateTagTests(SimpleTestCase):
    def test_defaults(self):
        with self.settings(SSEBRIDGE={}):
            self.assertEqual(render("{% ssebridge_url %}"), "http://127.0.0.1:8080/events")
            self.assertEqual(render("{% ssebridge_script %}"), '<script src="http://127.0.0.1:8080/ssebridge.js"></script>')

    @override_settings(SSEBRIDGE={"URL": "https://push.example.com/"})
    def test_configured_url_and_rooms(self):
        self.assertEqual(render("{% ssebridge_url %}"), "https://push.example.com/events")
        self.assertEqual(render('{% ssebridge_url "lobby" room %}', room="team 7"),
                         "https://push.example.com/events?rooms=lobby,team%207")
        self.assertEqual(render("{% ssebridge_url room %}", room=None), "https://push.example.com/events")
        self.assertEqual(render('{% ssebridge_url room as u %}{{ u|json_script:"sse-url" }}', room="lobby"),
                         '<script id="sse-url" type="application/json">"https://push.example.com/events?rooms=lobby"</script>')

    @override_settings(SSEBRIDGE={"URL": 'https://x.example/"><b>'})
    def test_escaped(self):
        self.assertEqual(render("{% ssebridge_url %}"), "https://x.example/&quot;&gt;&lt;b&gt;/events")
        self.assertEqual(render("{% ssebridge_script %}"),
                         '<script src="https://x.example/&quot;&gt;&lt;b&gt;/ssebridge.js"></script>')

    @override_settings(SSEBRIDGE={"URL": "https://push.example.com"})
    def test_context_processor(self):
        self.assertEqual(ssebridge(RequestFactory().get("/")), {
            "SSEBRIDGE_URL": "https://push.example.com",
            "SSEBRIDGE_EVENTS_URL": "https://push.example.com/events",
        })
