"""Views for the middleware's tests: contrib.auth's login and logout, as
any login path would call them, and a plain page."""

from django.contrib import auth
from django.contrib.auth.models import User
from django.http import HttpResponse
from django.urls import path

import ssebridge_django as sse


def page(request):
    return HttpResponse("ok")


def login(request, name):
    auth.login(request, User.objects.get(username=name))
    return HttpResponse("in")


def logout(request):
    auth.logout(request)
    return HttpResponse("out")


def short(request):
    # Django's session ends in 300 s: the ssebridge session must not outlive it.
    request.session.set_expiry(300)
    return HttpResponse("short")


def manual(request):
    # A view that manages the cookie itself (the low-level API).
    response = HttpResponse("manual")
    sse.login(request, response, "someone-else")
    return response


def rooms(request, user):
    return ["lobby", "u-" + user.username]


urlpatterns = [
    path("", page),
    path("login/<str:name>", login),
    path("logout", logout),
    path("short", short),
    path("manual", manual),
]
