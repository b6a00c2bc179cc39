"""The example's pages. Django does everything a real app would (who is
signed in, what they may post); ssebridge only carries the events."""

import re

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
        sse.login(request, response, user, rooms)  # revokes the browser's earlier session
        return response
    return render(request, "chat/signin.html", {"rooms": ROOMS})


@require_POST
def signout(request):
    response = redirect("signin")
    # Deletes the ssebridge session and ends the user's open streams at once.
    sse.logout(request, response)
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
    event_id = sse.publish_durable(sse.room(room), "chat", {"from": user, "text": text})
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
    event_id = sse.publish_durable(sse.user(to), "dm", {"from": user, "text": text})
    return JsonResponse({"id": event_id})
