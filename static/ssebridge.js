// ssebridge.js: a thin wrapper around the browser's EventSource.
//
// EventSource reconnects by itself after a dropped connection, but gives up
// for good on any non-200 answer, even a passing one (429, 503). This helper
// reopens such a stream with jittered backoff, and stops for good after
// `event: logout` or a final refusal (401, 403), which it learns from
// GET /events/check since EventSource hides the status.
//
//   const s = SSEBridge.open('https://push.example.com/events', {
//     on: { chat: (e) => show(JSON.parse(e.data)) },
//     onend: (why, status) => console.log('stream ended for good:', why, status),
//   });
//   s.close();
(function (global) {
  'use strict';
  function open(url, opts) {
    opts = opts || {};
    var on = opts.on || {};
    var es = null, timer = null, attempt = 0, stopped = false;

    function connect() {
      if (stopped) return;
      es = new EventSource(url, { withCredentials: opts.withCredentials !== false });
      Object.keys(on).forEach(function (name) { es.addEventListener(name, on[name]); });
      es.addEventListener('ready', function () { attempt = 0; });
      es.addEventListener('logout', function () { finish('logout'); });
      es.addEventListener('error', function () {
        // While CONNECTING the browser is retrying by itself; CLOSED means it gave up.
        if (!stopped && es.readyState === EventSource.CLOSED) check();
      });
    }

    function check() {
      var u = new URL(url, global.location.href);
      u.pathname = u.pathname.replace(/\/events\/?$/, '/events/check');
      fetch(u, { credentials: opts.withCredentials === false ? 'same-origin' : 'include' }).then(function (r) {
        if (r.status === 400 || r.status === 401 || r.status === 403) {
          return r.json().then(function (b) { finish('refused', r.status, b.error); }, function () { finish('refused', r.status); });
        }
        later(Number(r.headers.get('Retry-After')) * 1000);
      }, function () { later(0); });
    }

    function later(atLeast) {
      attempt++;
      var ms = Math.max(Math.min(30000, 1000 * Math.pow(2, attempt - 1)), atLeast || 0);
      timer = setTimeout(connect, ms / 2 + Math.random() * ms / 2);
    }

    function close() {
      stopped = true;
      clearTimeout(timer);
      if (es) es.close();
    }

    function finish(why, status, message) {
      close();
      if (opts.onend) opts.onend(why, status, message);
    }

    connect();
    return { close: close, source: function () { return es; } };
  }
  global.SSEBridge = { open: open };
})(window);
