// ssebridge.js: a thin wrapper around the browser's EventSource.
//
// EventSource reconnects by itself after a dropped connection, but gives up
// for good on any non-200 answer, even a passing one (429, 503). This helper
// reopens such a stream with jittered backoff, from the last event id it saw
// (?lastEventId=, since a new EventSource sends no Last-Event-ID), and stops
// for good after `event: logout` or a final refusal (400, 401, 403), which it
// learns from GET /events/check since EventSource hides the status. When it
// cannot learn why (CORS hides the answer too, or ssebridge is unreachable)
// it tells opts.onproblem after maxSilentTries tries in a row, and goes on.
//
// The tabs of a site share one stream per URL (unless shared: false): the
// leader, elected with Web Locks, alone holds the EventSource and relays
// every event over a BroadcastChannel; the other tabs give the relayed
// events ({type, data, lastEventId}) to the same callbacks. When the
// leader's tab closes, the next leader resumes from the last id relayed.
//
//   const s = SSEBridge.open('https://push.example.com/events', {
//     on: { chat: (e) => show(JSON.parse(e.data)) },
//     onend: (why, status) => console.log('stream ended for good:', why, status),
//     onproblem: (info) => console.warn('no stream after', info.tries, 'tries:', info.hint),
//   });
//   s.close();
(function (global) {
  'use strict';
  var HINT = "ssebridge's answer cannot be read. Likely causes: the page's origin is not in ALLOWED_ORIGINS of ssebridge; " +
    'the session cookie is not sent (SameSite, domain, withCredentials); ssebridge is not reachable.';

  // ssebridge's ids are "<epoch>:<ms>-<n>" and grow across all channels:
  // is a newer than b? An id of another epoch or form counts as newer.
  function newer(a, b) {
    var x = /^(.*):(\d+)-(\d+)$/.exec(a), y = /^(.*):(\d+)-(\d+)$/.exec(b);
    if (!x || !y || x[1] !== y[1]) return a !== b;
    return +x[2] > +y[2] || (+x[2] === +y[2] && +x[3] > +y[3]);
  }

  function open(url, opts) {
    opts = opts || {};
    var on = opts.on || {};
    var credentials = opts.withCredentials !== false;
    var maxSilent = opts.maxSilentTries || 5;
    var abs = new URL(url, global.location.href).href;
    var es = null, timer = null, attempt = 0, silent = 0, opened = false, stopped = false;
    var lastId = '';   // the newest id delivered in this tab: where a stream (re)opened by the helper resumes
    var esId = '';     // the EventSource's last id, to tell an event that carried an id: line
    var ready = null;  // the leader's current ready event, for tabs that join later
    var names = { ready: 1, reset: 1, logout: 1 }; // what the leader listens to: its own names and the other tabs'
    var leader = false, release = null, abort = null, chan = null;
    var me = Math.random().toString(36).slice(2);
    want(Object.keys(on));

    // The leader's EventSource.
    function connect() {
      if (stopped) return;
      var u = new URL(abs);
      if (lastId) u.searchParams.set('lastEventId', lastId);
      es = new EventSource(u.href, { withCredentials: credentials });
      esId = '';
      opened = false;
      Object.keys(names).forEach(function (n) { es.addEventListener(n, got); });
      es.addEventListener('open', function () { opened = true; });
      es.addEventListener('error', function () {
        ready = null;
        if (stopped) return;
        // CLOSED: the browser gave up (a refusal); ask why.
        if (es.readyState === EventSource.CLOSED) return check();
        // CONNECTING: the browser retries by itself. A try that failed
        // without ever opening (ssebridge unreachable) says nothing either.
        if (!opened) trouble('the stream cannot connect (the browser keeps retrying)');
        opened = false;
      });
    }

    // An event of the leader's EventSource: relay it, then deliver it here.
    function got(e) {
      var own = !!e.lastEventId && e.lastEventId !== esId;
      if (own) esId = e.lastEventId;
      var ev = { type: e.type, data: e.data, lastEventId: e.lastEventId };
      if (!take(ev, own)) return;
      if (e.type === 'ready') { attempt = 0; silent = 0; ready = ev; }
      post({ ev: ev, own: own });
      if (on[e.type]) on[e.type](e);
      if (e.type === 'logout') finish('logout');
    }

    // Every tab delivers the events that carry an id in growing id order,
    // once: one not newer than the last delivered came already (for a moment
    // after a hand-over, the old leader's last relays and the new leader's
    // replay may overlap). ready and reset set the position, whatever it was.
    function take(ev, own) {
      if (!own) return true;
      if (lastId && ev.type !== 'ready' && ev.type !== 'reset' && !newer(ev.lastEventId, lastId)) return false;
      lastId = ev.lastEventId;
      return true;
    }

    function check() {
      var u = new URL(abs);
      u.pathname = u.pathname.replace(/\/events\/?$/, '/events/check');
      fetch(u, { credentials: credentials ? 'include' : 'same-origin' }).then(function (r) {
        if (stopped) return;
        silent = 0; // ssebridge answered, and the page could read it
        if (r.status === 400 || r.status === 401 || r.status === 403) {
          return r.json().then(function (b) { finish('refused', r.status, b.error); }, function () { finish('refused', r.status); });
        }
        later(Number(r.headers.get('Retry-After')) * 1000);
      }, function (err) {
        if (stopped) return;
        trouble('GET /events/check failed: ' + err);
        later(0);
      });
    }

    function later(atLeast) {
      attempt++;
      var ms = Math.max(Math.min(30000, 1000 * Math.pow(2, attempt - 1)), atLeast || 0);
      timer = setTimeout(connect, ms / 2 + Math.random() * ms / 2);
    }

    // A try that failed for a reason the page cannot see: after
    // maxSilentTries in a row, and at each one after that, say so.
    function trouble(reason) {
      if (++silent < maxSilent) return;
      var info = { tries: silent, reason: reason, hint: HINT };
      post({ problem: info });
      if (opts.onproblem) opts.onproblem(info);
    }

    // Messages from the other tabs of this stream.
    function heard(msg) {
      var m = msg.data;
      if (stopped || (m.to && m.to !== me)) return;
      if (m.names) {
        want(m.names);
        if (m.hello) { // a new tab: tell it our names (should it lead one day) and, if live, that it is
          post({ names: Object.keys(on) });
          if (leader && ready) post({ to: m.hello, ev: { type: 'ready', data: ready.data, lastEventId: lastId }, own: true });
        }
      }
      if (m.ev && take(m.ev, m.own) && on[m.ev.type]) on[m.ev.type](m.ev);
      if (m.problem && opts.onproblem) opts.onproblem(m.problem);
      if (m.end) finish(m.end[0], m.end[1], m.end[2], true);
    }

    function want(list) {
      list.forEach(function (n) {
        if (names[n]) return;
        names[n] = 1;
        if (es) es.addEventListener(n, got);
      });
    }

    function post(m) { if (chan) chan.postMessage(m); }

    function close() {
      stopped = true;
      clearTimeout(timer);
      if (es) es.close();
      if (release) release(); // the next tab leads, from lastId
      if (abort) abort.abort(); // or stop waiting to lead
      if (chan) chan.close();
      chan = null;
    }

    // The end of the stream for good, for every tab.
    function finish(why, status, message, heardIt) {
      if (stopped) return;
      if (leader && !heardIt) post({ end: [why, status, message] });
      close();
      if (opts.onend) opts.onend(why, status, message);
    }

    var nav = global.navigator;
    if (opts.shared === false || !nav || !nav.locks || typeof BroadcastChannel !== 'function') {
      leader = true;
      connect();
    } else {
      var name = 'ssebridge ' + abs;
      chan = new BroadcastChannel(name);
      chan.onmessage = heard;
      abort = new AbortController();
      nav.locks.request(name, { signal: abort.signal }, function () {
        if (stopped) return;
        leader = true;
        connect();
        return new Promise(function (resolve) { release = resolve; }); // held until close, or the tab goes
      }).catch(function () {}); // aborted: closed before it led
      post({ names: Object.keys(on), hello: me });
    }
    return {
      close: close,
      source: function () { return es; },
      isLeader: function () { return leader; },
    };
  }
  global.SSEBridge = { open: open };
})(window);
