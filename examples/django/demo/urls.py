from django.urls import path

from chat import views

urlpatterns = [
    path("", views.signin, name="signin"),
    path("signout", views.signout, name="signout"),
    path("me", views.me, name="me"),
    path("room/<str:room>", views.room, name="room"),
    path("room/<str:room>/post", views.post, name="post"),
    path("dm", views.direct, name="dm"),
]
