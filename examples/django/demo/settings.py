"""Settings of the ssebridge Django example. Everything comes from the
environment, with defaults for running beside `go run .` on one machine."""

import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions", "ssebridge_django", "chat"]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # The ssebridge session follows contrib.auth's login, logout and user
    # changes (the accounts' sign-in); the quick sign-in calls login() itself.
    "ssebridge_django.middleware.SSEBridgeSessionMiddleware",
]
ROOT_URLCONF = "demo.urls"
WSGI_APPLICATION = "demo.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

# Django's own session (who is signed in) lives in a signed cookie. The
# database holds only contrib.auth's accounts (manage.py migrate, then
# createsuperuser); the quick sign-in needs none.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.environ.get("DJANGO_DB") or os.path.join(BASE_DIR, "db.sqlite3")}}
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/me"
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True

# ssebridge_django's settings (its package docstring lists them all): where
# browsers reach ssebridge, the Redis both share, and the cookie.
SSEBRIDGE = {
    "URL": os.environ.get("SSE_URL", "http://127.0.0.1:8080"),
    "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    "COOKIE": os.environ.get("SESSION_COOKIE", "sse_session"),
    "COOKIE_SECURE": os.environ.get("SSEBRIDGE_COOKIE_SECURE", "0") == "1",
    "COOKIE_DOMAIN": os.environ.get("SSEBRIDGE_COOKIE_DOMAIN") or None,
    # The middleware: a new session's rooms (the ones joined in Django's
    # session), the account's name as the ssebridge user (DMs go by name),
    # and how long a session lasts since its last renewal.
    "ROOMS": "chat.views.rooms_for",
    "USER_ID": "chat.views.account_name",
    "SESSION_TTL": int(os.environ.get("SSEBRIDGE_SESSION_TTL", "86400")),
    "SESSION_RENEW_INTERVAL": int(os.environ["SSEBRIDGE_SESSION_RENEW_INTERVAL"]) if os.environ.get("SSEBRIDGE_SESSION_RENEW_INTERVAL") else None,
}
