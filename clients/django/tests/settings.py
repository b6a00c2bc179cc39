"""Settings for the package's own tests: python3 runtests.py, or
python3 -m django test --settings=tests.settings from clients/django."""

SECRET_KEY = "tests-only"
INSTALLED_APPS = ["ssebridge_django"]
DATABASES = {}
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
