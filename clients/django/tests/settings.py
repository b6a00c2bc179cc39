"""Settings for the package's own tests: python3 runtests.py, or
python3 -m django test --settings=tests.settings from clients/django."""

SECRET_KEY = "tests-only"
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "ssebridge_django"]
# For the middleware's tests (tests/test_middleware.py): contrib.auth's
# users in an in-memory SQLite, Django's session in a signed cookie.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "ssebridge_django.middleware.SSEBridgeSessionMiddleware",
]
ROOT_URLCONF = "tests.urls"
USE_TZ = True
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["ssebridge_django.context_processors.ssebridge"]},
    }
]
# Starts a real redis-server on a free loopback port for the run (tests/runner.py).
TEST_RUNNER = "tests.runner.Runner"
# REDIS_URL is the runner's server's; the rest are the defaults.
SSEBRIDGE = {}
