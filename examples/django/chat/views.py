"""The example's pages. Django does everything a real app would (who is
signed in, what they may post); ssebridge only carries the events."""

import json
import re

from django.conf import settings
from django.http import HttpResponseBadRequest, HttpResponseForbidden, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

import ssebridge_django as sse

NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
ROOMS = ["lobby", "team-7"]


def _user(request):
    return request.session.get("user")


def signin(request):
    if request.method == "POST":
        user = request.POST.get("user", "").strip()
        rooms = [r for r in request.POST.getlist("rooms") if r in ROOMS]
        if not NAME.match(user):
            return render(request, "chat/signin.html", {"rooms": ROOMS, "error": "Letters, digits and _ - . : @ only."}, status=400)
        request.session["user"] = user
        request.session["rooms"] = rooms
        response = redirect("room", room=rooms[0]) if rooms else redirect("me")
        sse.create_session(response, user, rooms)
        return response
    return render(request, "chat/signin.html", {"rooms": ROOMS})


@require_POST
def signout(request):
    response = redirect("signin")
    user = _user(request)
    sse.end_session(request, response, user=user)
    request.session.flush()
    return response


def _page(request, room):
    user = _user(request)
    if not user:
        return redirect("signin")
    return render(request, "chat/room.html", {
        "user": user,
        "room": room,
        "rooms": request.session.get("rooms", []),
        "sse_url": settings.SSE_URL,
    })


def me(request):
    return _page(request, None)


def room(request, room):
    if room not in request.session.get("rooms", []):
        return HttpResponseForbidden("not in this room")
    return _page(request, room)


@require_POST
def post(request, room):
    user = _user(request)
    if not user or room not in request.session.get("rooms", []):
        return HttpResponseForbidden("not in this room")
    text = request.POST.get("text", "").strip()
    if not text:
        return HttpResponseBadRequest("empty message")
    event_id = sse.publish("room:" + room, "chat", {"from": user, "text": text})
    return JsonResponse({"id": event_id})


@require_POST
def direct(request):
    user = _user(request)
    to = request.POST.get("to", "").strip()
    text = request.POST.get("text", "").strip()
    if not user:
        return HttpResponseForbidden("sign in first")
    if not NAME.match(to) or not text:
        return HttpResponseBadRequest("need a recipient and a message")
    event_id = sse.publish("user:" + to, "dm", {"from": user, "text": text})
    return JsonResponse({"id": event_id})
