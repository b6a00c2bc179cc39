#!/usr/bin/env python3
"""A client of ssebridge's GET /events with Python's standard library alone.

    SSEBRIDGE_TOKEN=... python3 ssebridge_client.py --state last-id.txt http://127.0.0.1:8080/events

It prints one JSON line per event on stdout ({"event", "id", "data"}) and
what it does on stderr (never the token), and follows docs/protocol.md
as docs/CLIENTS.md describes:

- the session token goes in ``Authorization: Bearer`` (taken from the
  environment, not the command line, where ``ps`` would show it);
- every id the stream carries (``ready``'s and ``reset``'s included, and
  a bare ``id:`` line) becomes the ``Last-Event-ID`` of the next request,
  and with ``--state FILE`` it is written to FILE (atomically, after the
  event is handled), so that a new process resumes where the last one
  stopped: what a mobile app does across restarts;
- a stream that ends is reopened after the server's ``retry:`` hint;
  failed connections and 5xx answers back off exponentially, with jitter;
- 429 and 503 are retried after their ``Retry-After``;
- 400, 401 and 403 are final: it stops (exit 2) rather than asking again
  with a token that will not become valid;
- ``event: logout`` ends it (exit 0): the session is over;
- a stream silent for longer than ``--idle-timeout`` (the server sends
  ``: ping`` every HEARTBEAT_INTERVAL, 15 s by default) is taken for dead
  and reopened.

Use it as a module too: ``Client(url, token, state_file).run(on_event)``.
"""

import argparse
import email.utils
import http.client
import json
import os
import random
import signal
import sys
import tempfile
import time
import urllib.parse

FINAL = (400, 401, 403)  # a new request would get the same answer
EXIT_FINAL = 2


class Stop(Exception):
    """Raised by an event handler (or on logout) to end run()."""

    def __init__(self, code=0):
        super().__init__(code)
        self.code = code


class Client:
    def __init__(self, url, token, state_file=None, idle_timeout=45.0,
                 max_backoff=60.0, log=None):
        self.url = urllib.parse.urlsplit(url)
        if self.url.scheme not in ("http", "https"):
            raise ValueError("the URL must be http:// or https://")
        self.token = token
        self.state_file = state_file
        self.idle_timeout = idle_timeout
        self.max_backoff = max_backoff
        self.retry = 2.0  # seconds; the server's retry: hint replaces it
        self.failures = 0  # failed tries in a row, for the backoff
        self.log = log or (lambda msg: print("ssebridge client:", msg, file=sys.stderr, flush=True))
        self.last_id = self._load()

    # -- the last id, kept across restarts ---------------------------------

    def _load(self):
        if not self.state_file:
            return ""
        try:
            with open(self.state_file, encoding="utf-8") as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    def _save(self):
        if not self.state_file:
            return
        d = os.path.dirname(os.path.abspath(self.state_file))
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".ssebridge-last-id.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.last_id)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_file)  # atomic: the old id or the new one, never half
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    # -- the loop -----------------------------------------------------------

    def run(self, on_event):
        """Reads the stream until a final refusal (returns EXIT_FINAL), a
        logout or Stop from on_event (returns its code). on_event(event,
        id, data) is called for each event, before its id is saved."""
        while True:
            try:
                delay = self._once(on_event)
            except Stop as s:
                return s.code
            except (OSError, http.client.HTTPException) as e:
                # refused connection, reset, idle timeout, bad chunking...
                delay = self._backoff(None)
                self.log(f"connection failed ({e.__class__.__name__}: {e}); retrying in {delay:.1f}s")
            if delay is None:
                return EXIT_FINAL
            time.sleep(delay)

    def _backoff(self, retry_after):
        self.failures += 1
        if retry_after is not None:
            base = retry_after
        else:
            base = min(self.max_backoff, self.retry * 2 ** (self.failures - 1))
        return base * random.uniform(1.0, 1.5)  # not every client in the same second

    def _connect(self):
        cls = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
        return cls(self.url.hostname, self.url.port, timeout=self.idle_timeout)

    def _once(self, on_event):
        """One request. Returns the delay before the next, or None to stop."""
        path = self.url.path or "/"
        if self.url.query:
            path += "?" + self.url.query
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store",
                   "Authorization": "Bearer " + self.token}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        conn = self._connect()
        try:
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            if resp.status != 200:
                return self._refused(resp)
            ctype = resp.getheader("Content-Type", "")
            if not ctype.startswith("text/event-stream"):
                delay = self._backoff(None)
                self.log(f"200 but {ctype!r}, not an event stream (a proxy?); retrying in {delay:.1f}s")
                return delay
            self.log("connected" + (" (resuming)" if self.last_id else ""))
            self._read(resp, on_event)
            # The server ended the stream (shutdown, slow reader): it said
            # when to come back with retry:.
            self.log(f"stream ended; reconnecting in {self.retry:.1f}s")
            return self.retry
        finally:
            conn.close()

    def _refused(self, resp):
        body = resp.read(4096).decode("utf-8", "replace")
        try:
            why = json.loads(body).get("error", body)
        except (ValueError, AttributeError):
            why = body.strip()[:200]
        if resp.status in FINAL:
            self.log(f"refused with {resp.status} ({why}): stopping")
            return None
        delay = self._backoff(retry_after(resp.getheader("Retry-After")))
        self.log(f"refused with {resp.status} ({why}); retrying in {delay:.1f}s")
        return delay

    # -- the event stream format (the WHATWG HTML standard's) ---------------

    def _read(self, resp, on_event):
        event, data, id_seen = "", [], None
        for line in lines(resp):
            if line == "":  # a blank line dispatches
                if id_seen is not None and id_seen != self.last_id:
                    self.last_id = id_seen
                    changed = True
                else:
                    changed = False
                if data:
                    name = event or "message"
                    if name == "ready":
                        self.failures = 0
                    on_event(name, self.last_id, "\n".join(data))
                    if changed:
                        self._save()
                    if name == "logout":
                        self.log("logged out: stopping")
                        raise Stop(0)
                elif changed:  # a bare id: moves the position, fires nothing
                    self._save()
                event, data, id_seen = "", [], None
                continue
            if line.startswith(":"):
                continue  # a comment: the heartbeat
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "data":
                data.append(value)
            elif field == "event":
                event = value
            elif field == "id":
                if "\0" not in value:
                    id_seen = value
            elif field == "retry":
                if value.isdigit():
                    self.retry = int(value) / 1000


def lines(resp):
    """The lines of an event stream, decoded: CR LF, LF and CR each end one."""
    buf = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            return  # the end of the stream; a partial last event is dropped
        buf += chunk
        while True:
            i = min((j for j in (buf.find(b"\r"), buf.find(b"\n")) if j >= 0), default=-1)
            if i < 0 or (buf[i:i + 1] == b"\r" and i + 1 == len(buf)):
                break  # no full line yet (a CR at the end may be half a CR LF)
            line, rest = buf[:i], buf[i + 1:]
            if buf[i:i + 2] == b"\r\n":
                rest = buf[i + 2:]
            buf = rest
            yield line.decode("utf-8", "replace")


def retry_after(value):
    """Retry-After in seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="ssebridge's /events URL, e.g. http://127.0.0.1:8080/events")
    p.add_argument("--state", help="file that keeps the last event id across restarts")
    p.add_argument("--idle-timeout", type=float, default=45.0,
                   help="seconds without a byte (not even : ping) before the stream is taken for dead (default 45)")
    args = p.parse_args(argv)
    token = os.environ.get("SSEBRIDGE_TOKEN")
    if not token:
        p.error("set SSEBRIDGE_TOKEN")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the id is on disk already

    def show(event, id_, data):
        print(json.dumps({"event": event, "id": id_, "data": data}), flush=True)

    client = Client(args.url, token, args.state, args.idle_timeout)
    try:
        return client.run(show)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
