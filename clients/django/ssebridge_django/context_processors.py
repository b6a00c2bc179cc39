"""TEMPLATES[...]["OPTIONS"]["context_processors"] += ["ssebridge_django.context_processors.ssebridge"]

Gives every template SSEBRIDGE_URL (where browsers reach ssebridge) and
SSEBRIDGE_EVENTS_URL (its stream, all the session's rooms)."""

from .templatetags.ssebridge import base_url, events_url


def ssebridge(request):
    return {"SSEBRIDGE_URL": base_url(), "SSEBRIDGE_EVENTS_URL": events_url()}
