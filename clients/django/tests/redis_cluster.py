"""A real Redis Cluster for the cluster tests: three masters on free loopback
ports, joined with redis-cli --cluster create, no persistence."""

import shutil
import socket
import subprocess
import tempfile
import time

import redis


class Cluster:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ssebridge-django-cluster-")
        self.procs = []
        self.ports = []

    @property
    def addrs(self):
        return ",".join("127.0.0.1:%d" % p for p in self.ports)

    def start(self, n=3, timeout=20):
        for i in range(n):
            for _ in range(5):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                if port + 10000 > 65535:
                    continue
                d = tempfile.mkdtemp(dir=self.dir)
                proc = subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no", "--dir", d,
                     "--logfile", "redis.log"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                )
                if self._await(port, proc, 10):
                    self.procs.append(proc)
                    self.ports.append(port)
                    break
                proc.kill()
                proc.wait()
            else:
                self.stop()
                raise RuntimeError("a cluster node did not start")
        subprocess.run(["redis-cli", "--cluster", "create"] + ["127.0.0.1:%d" % p for p in self.ports]
                       + ["--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True)
        deadline = time.monotonic() + timeout
        for port in self.ports:
            c = redis.Redis(host="127.0.0.1", port=port)
            while b"cluster_state:ok" not in c.execute_command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster is not ok within %ss" % timeout)
                time.sleep(0.05)
            c.close()
        return self

    @staticmethod
    def _await(port, proc, timeout):
        c = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return False
                try:
                    if c.ping():
                        return True
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
            return False
        finally:
            c.close()

    def node_of(self, key):
        """A plain client of the master that serves key's slot."""
        c = redis.Redis(host="127.0.0.1", port=self.ports[0])
        try:
            slot = c.execute_command("CLUSTER", "KEYSLOT", key)
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return redis.Redis(host="127.0.0.1", port=master[1])
        finally:
            c.close()
        raise RuntimeError("no master serves %r" % key)

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)
