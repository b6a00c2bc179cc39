"""Settings of the ssebridge Django example. Everything comes from the
environment, with defaults for running beside `go run .` on one machine."""

import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = ["django.contrib.sessions", "ssebridge_django", "chat"]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
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

# No database: Django's own session (who is signed in) lives in a signed cookie.
DATABASES = {}
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
}
