"""A real redis-server for the tests, on a free loopback port, no persistence."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import redis

SERVER = None  # the run's server, set by tests.runner.Runner

MISSING = (
    "redis-server is not installed: the ssebridge_django tests need a real one "
    "(apt-get install -y redis-server; .ci/run does it)"
)


def in_ci():
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


class Server:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ssebridge-django-redis-")
        self.proc = None
        self.port = None

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def client(self):
        return redis.Redis.from_url(self.url)

    def start(self, timeout=10):
        # A free port can be taken between the probe and redis-server's bind:
        # then it exits, and another port is tried.
        last = ""
        for _ in range(5):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            log = os.path.join(self.dir, "redis.log")
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", self.dir, "--logfile", log],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )
            if self._await_ping(timeout):
                return self
            self.stop(remove=False)
            last = open(log, errors="replace").read() if os.path.exists(log) else ""
        raise RuntimeError("redis-server did not start:\n" + last[-2000:])

    def _await_ping(self, timeout):
        # Wait for it to answer (or to exit), polling: an event awaited.
        c = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    if c.ping():
                        return True
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
            return False
        finally:
            c.close()

    def stop(self, remove=True):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)


def available():
    return shutil.which("redis-server") is not None
