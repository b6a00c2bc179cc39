import sys

from django.conf import settings
from django.test.runner import DiscoverRunner

from . import redis_server


class Runner(DiscoverRunner):
    """Django's runner, plus one real redis-server for the whole run.

    Without redis-server the Redis tests are skipped, loudly; under CI=true
    that, or any other skipped test, fails the run instead.
    """

    def setup_test_environment(self, **kwargs):
        super().setup_test_environment(**kwargs)
        if not redis_server.available():
            if redis_server.in_ci():
                raise SystemExit("FAIL: " + redis_server.MISSING)
            sys.stderr.write("\n*** SSEBRIDGE_DJANGO REDIS TESTS NOT RUN: %s ***\n\n" % redis_server.MISSING)
            return
        redis_server.SERVER = redis_server.Server().start()
        self.log("redis-server for the tests: %s" % redis_server.SERVER.url)
        settings.SSEBRIDGE = dict(settings.SSEBRIDGE, REDIS_URL=redis_server.SERVER.url)

    def teardown_test_environment(self, **kwargs):
        if redis_server.SERVER is not None:
            redis_server.SERVER.stop()
            redis_server.SERVER = None
        super().teardown_test_environment(**kwargs)

    def log(self, msg):
        if self.verbosity > 0:
            sys.stderr.write(msg + "\n")

    def suite_result(self, suite, result, **kwargs):
        failed = super().suite_result(suite, result, **kwargs)
        if redis_server.in_ci() and result.skipped:
            sys.stderr.write("FAIL: %d tests skipped under CI=true:\n" % len(result.skipped))
            for test, why in result.skipped:
                sys.stderr.write("  %s: %s\n" % (test, why))
            failed += len(result.skipped)
        return failed
