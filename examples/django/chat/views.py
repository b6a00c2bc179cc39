"""The example's pages. Django does everything a real app would (who is
signed in, what they may post); ssebridge only carries the events."""

import re

from django.contrib import auth
from django.http import HttpResponseBadRequest, HttpResponseForbidden, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

import ssebridge_django as sse

NAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
ROOMS = ["lobby", "team-7"]


def _user(request):
    # An account (contrib.auth, /accounts/login/) or a quick sign-in's name.
    if request.user.is_authenticated:
        return account_name(request.user)
    return request.session.get("user")


def _joined(request):
    # The rooms joined, in Django's session; an account starts in the lobby.
    return request.session.get("rooms", ["lobby"] if request.user.is_authenticated else [])


def rooms_for(request, user):
    """SSEBRIDGE["ROOMS"]: the rooms of a session the middleware issues."""
    return _joined(request)


def account_name(user):
    """SSEBRIDGE["USER_ID"]: an account is known to ssebridge by its name
    (the example's DMs go by name), which must follow ssebridge's rule."""
    return user.get_username()


def signin(request):
    if request.method == "POST":
        user = request.POST.get("user", "").strip()
        rooms = [r for r in request.POST.getlist("rooms") if r in ROOMS]
        if not NAME.match(user):
            return render(request, "chat/signin.html", {"rooms": ROOMS, "error": "Letters, digits and _ - . : @ only."}, status=400)
        if request.user.is_authenticated:
            auth.logout(request)  # an account's session ends (the middleware's signal revokes it)
        request.session["user"] = user
        request.session["rooms"] = rooms
        response = redirect("room", room=rooms[0]) if rooms else redirect("me")
        sse.login(request, response, user, rooms)  # revokes the browser's earlier session
        return response
    return render(request, "chat/signin.html", {"rooms": ROOMS})


@require_POST
def signout(request):
    response = redirect("signin")
    if request.user.is_authenticated:
        # An account: Django's logout; the middleware deletes the ssebridge
        # session, ends the user's open streams and clears the cookie.
        auth.logout(request)
        return response
    # The quick sign-in, by hand: deletes the ssebridge session and ends the
    # user's open streams at once.
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
        "rooms": _joined(request),
        "all_rooms": ROOMS,
    })


def me(request):
    return _page(request, None)


def room(request, room):
    if room not in _joined(request):
        return HttpResponseForbidden("not in this room")
    return _page(request, room)


@require_POST
def post(request, room):
    user = _user(request)
    if not user or room not in _joined(request):
        return HttpResponseForbidden("not in this room")
    text = request.POST.get("text", "").strip()
    if not text:
        return HttpResponseBadRequest("empty message")
    event_id = sse.publish_durable(sse.room(room), "chat", {"from": user, "text": text, "room": room})
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


@require_POST
def membership(request, room, action):
    """Join or leave a room: Django's session (who may post where) and the
    ssebridge session change together, and the user's open streams join or
    leave the room at once (set_rooms publishes join/leave): no reload."""
    if not _user(request):
        return HttpResponseForbidden("sign in first")
    if room not in ROOMS:
        return HttpResponseBadRequest("no such room")
    rooms = [r for r in _joined(request) if r != room]
    if action == "join":
        rooms.append(room)
    request.session["rooms"] = rooms
    sse.set_rooms(request, rooms)
    return JsonResponse({"rooms": rooms})
