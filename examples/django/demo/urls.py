from django.contrib.auth import views as auth_views
from django.urls import path

from chat import views

urlpatterns = [
    path("", views.signin, name="signin"),
    path("signout", views.signout, name="signout"),
    # contrib.auth's own login form: the middleware gives the account its
    # ssebridge session, nothing in the view.
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("me", views.me, name="me"),
    path("room/<str:room>", views.room, name="room"),
    path("room/<str:room>/post", views.post, name="post"),
    path("room/<str:room>/join", views.membership, {"action": "join"}, name="join"),
    path("room/<str:room>/leave", views.membership, {"action": "leave"}, name="leave"),
    path("dm", views.direct, name="dm"),
]
