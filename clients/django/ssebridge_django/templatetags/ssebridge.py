"""{% load ssebridge %}

{% ssebridge_url %}                  SSEBRIDGE["URL"] + "/events": the stream's URL
{% ssebridge_url "lobby" room %}     ... + "?rooms=lobby,<room>" (empty names left out)
{% ssebridge_url room as url %}      into a variable, e.g. for {{ url|json_script:"sse-url" }}
{% ssebridge_script %}               <script src="<URL>/ssebridge.js"></script>
"""

from urllib.parse import quote

from django import template
from django.utils.html import format_html

from .. import conf

register = template.Library()


def base_url():
    return str(conf.get("URL")).rstrip("/")


def events_url(*rooms):
    """The URL of a stream, limited to rooms when any are named."""
    url = base_url() + "/events"
    names = [str(r) for r in rooms if r not in (None, "")]
    if names:
        url += "?rooms=" + ",".join(quote(n, safe="") for n in names)
    return url


@register.simple_tag
def ssebridge_url(*rooms):
    return events_url(*rooms)


@register.simple_tag
def ssebridge_script():
    return format_html('<script src="{}/ssebridge.js"></script>', base_url())
