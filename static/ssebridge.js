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
// The tabs of a site share one stream per URL and session (unless shared:
// false). The cookie is HttpOnly: a tab first asks GET /events/check which
// session the browser holds (an id of it, never the token). The tabs of
// that session elect a leader with Web Locks; it alone holds the
// EventSource and relays every event over a BroadcastChannel, both named
// after the URL and the session; the other tabs give the relayed events
// ({type, data, lastEventId}) to the same callbacks. When the leader's tab
// closes, the next leader resumes from the last id relayed.
//
// A tab shows only events of a stream opened for the session it believes
// it has. When ssebridge says the browser's session changed (a stream's
// ready; /events/check, asked when another tab announces a session, after a
// refusal or on a logout), the tab leaves its stream and tabs for the new
// session's, starts afresh and tells opts.onsession({user, session,
// previous}): a page drawn for another user should reload.
//
// A stream is live once ssebridge's ready came, not when the connection
// opened: a proxy answering only retry: while ssebridge is down opens the
// EventSource too. opts.onstate(state) tells 'live' and 'connecting' (the
// browser or the helper retrying) in every tab of the stream.
//
//   const s = SSEBridge.open('https://push.example.com/events', {
//     on: { chat: (e) => show(JSON.parse(e.data)) },
//     onend: (why, status) => console.log('stream ended for good:', why, status),
//     onproblem: (info) => console.warn('no stream after', info.tries, 'tries:', info.hint),
//     onsession: () => location.reload(), // another user logged in in this browser
//     onstate: (state) => badge(state), // 'live' once ssebridge said ready, 'connecting' while it is reconnecting
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
    var nav = global.navigator;
    var shared = opts.shared !== false && !!nav && !!nav.locks && typeof BroadcastChannel === 'function';
    var es = null, timer = null, attempt = 0, silent = 0, opened = false, stopped = false, asking = false;
    var lastId = '';   // the newest id delivered in this tab: where a stream (re)opened by the helper resumes
    var esId = '';     // the EventSource's last id, to tell an event that carried an id: line
    var ready = null;  // the leader's current ready event, for tabs that join later
    // What the leader listens to: its own names and the other tabs'. No
    // prototype: an event may be named "constructor" or "__proto__".
    var names = Object.create(null);
    names.ready = names.reset = names.logout = 1;
    var handler = function (type) { return Object.prototype.hasOwnProperty.call(on, type) ? on[type] : null; };
    var leader = false, release = null, abort = null, chan = null, hall = null;
    // The session this tab believes it has, {user, session}, as ssebridge
    // said it (/events/check, a ready): never from the page or another tab.
    var who = null;
    var esWho = null;  // the session of the EventSource's stream, from its ready; null until it came
    var gen = 0;       // counts leave(): an answer asked for before is stale
    var now = '';      // the state told to opts.onstate last
    var me = Math.random().toString(36).slice(2);
    want(Object.keys(on));

    // The leader's EventSource.
    function connect() {
      if (stopped) return;
      var u = new URL(abs);
      if (lastId) u.searchParams.set('lastEventId', lastId);
      var src = es = new EventSource(u.href, { withCredentials: credentials });
      esId = '';
      esWho = null;
      opened = false;
      Object.keys(names).forEach(function (n) { src.addEventListener(n, got); });
      src.addEventListener('open', function () { opened = true; });
      src.addEventListener('error', function () {
        if (stopped || src !== es) return;
        tell('connecting');
        ready = null;
        esWho = null; // a reconnection carries the cookie of that moment: its ready says whose it is
        // CLOSED: the browser gave up (a refusal); ask why.
        if (src.readyState === EventSource.CLOSED) return check();
        // CONNECTING: the browser retries by itself. A try that failed
        // without ever opening (ssebridge unreachable) says nothing either.
        if (!opened) trouble('the stream cannot connect (the browser keeps retrying)');
        opened = false;
      });
    }

    // An event of the leader's EventSource: relay it, then deliver it here.
    function got(e) {
      if (stopped || e.target !== es) return;
      if (e.type === 'ready') {
        var d = parse(e.data);
        esWho = d.session || '';
        if (!who) who = { user: d.user, session: esWho }; // an unshared stream's first: the tab is its
        if (esWho !== who.session) return move({ user: d.user, session: esWho });
        who.user = d.user;
      }
      if (esWho === null || esWho !== who.session) return; // never an event of another session's stream
      var own = !!e.lastEventId && e.lastEventId !== esId;
      if (own) esId = e.lastEventId;
      var ev = { type: e.type, data: e.data, lastEventId: e.lastEventId };
      if (!take(ev, own)) return;
      if (e.type === 'ready') { attempt = 0; silent = 0; ready = ev; }
      post({ ev: ev, own: own });
      if (e.type === 'ready') tell('live');
      var f = handler(e.type);
      if (f) f(e);
      if (e.type === 'logout' && !stopped) loggedOut(); // (the page may have closed the handle)
    }

    // A logout ends this session's stream. The browser may hold another
    // session by now (a login in another tab revoked this one, and
    // ssebridge ended its streams): then the tab moves to it, else it ends.
    // Every tab asks for itself: the leader's may go away (a page that
    // leaves on logout) before it tells the others, and one of them, the
    // next leader, would open the stream again. Meanwhile the tab leaves
    // the stream and the lock: a follower granted the lock while it asks
    // would open the stream again before it heard the answer.
    function loggedOut() {
      var was = who.session;
      leave();
      ready = null;
      ask(function (r, b) {
        if (r && r.ok && b.session && b.session !== was) return move({ user: b.user, session: b.session });
        finish('logout');
      });
    }

    function parse(data) {
      try { return JSON.parse(data) || {}; } catch (err) { return {}; }
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

    // GET /events/check: then(response, body), or then(null, error) when
    // the answer cannot be had or read; not at all if the tab closed, or
    // left its stream and tabs meanwhile (the answer is of another time).
    function ask(then) {
      var u = new URL(abs), g = gen;
      u.pathname = u.pathname.replace(/\/events\/?$/, '/events/check');
      fetch(u, { credentials: credentials ? 'include' : 'same-origin' }).then(function (r) {
        return r.json().then(null, function () { return {}; }).then(function (b) { if (!stopped && g === gen) then(r, b || {}); });
      }, function (err) { if (!stopped && g === gen) then(null, err); });
    }

    // A final refusal ends the stream in every tab.
    function refused(r, b) {
      if (r.status !== 400 && r.status !== 401 && r.status !== 403) return false;
      finish('refused', r.status, b.error);
      return true;
    }

    // A shared stream starts by asking whose session the browser holds.
    function start() {
      ask(function (r, b) {
        if (!r) { trouble('GET /events/check failed: ' + b); return later(0, start); }
        silent = 0; // ssebridge answered, and the page could read it
        if (refused(r, b)) return;
        // 200, or a limit of the user's (perhaps the stream its leader holds)
        if (b.session) { who = { user: b.user, session: b.session }; attempt = 0; return join(); }
        if (r.ok) { shared = false; return connect(); } // an older ssebridge names no session: no sharing
        later(Number(r.headers.get('Retry-After')) * 1000, start);
      });
    }

    // After the browser gave up on the stream: why?
    function check() {
      ask(function (r, b) {
        if (!r) { trouble('GET /events/check failed: ' + b); return later(0, connect); }
        silent = 0;
        if (refused(r, b)) return;
        if (b.session && who && b.session !== who.session) return move({ user: b.user, session: b.session });
        later(Number(r.headers.get('Retry-After')) * 1000, connect);
      });
    }

    // Another tab announced another session: has the browser's changed?
    function recheck() {
      if (asking) return;
      asking = true;
      ask(function (r, b) {
        asking = false;
        if (!r || refused(r, b)) return;
        if (b.session && b.session !== who.session) move({ user: b.user, session: b.session });
      });
    }

    // The jitter spreads the backoff, never goes below atLeast (a
    // Retry-After): a try before it would only be refused again.
    function later(atLeast, then) {
      attempt++;
      var ms = Math.min(30000, 1000 * Math.pow(2, attempt - 1));
      timer = setTimeout(then, Math.max(ms / 2 + Math.random() * ms / 2, atLeast || 0) + Math.random() * 250);
    }

    // A try that failed for a reason the page cannot see: after
    // maxSilentTries in a row, and at each one after that, say so.
    function trouble(reason) {
      if (++silent < maxSilent) return;
      var info = { tries: silent, reason: reason, hint: HINT };
      post({ problem: info });
      if (opts.onproblem) opts.onproblem(info);
    }

    // The tabs of this URL and session: the lock and channel named after
    // both. A new tab announces its session to every tab of the URL, whose
    // tabs of another session then ask ssebridge whether theirs changed.
    function join() {
      var name = 'ssebridge ' + who.session + ' ' + abs;
      chan = new BroadcastChannel(name);
      chan.onmessage = heard;
      var mine = abort = new AbortController();
      nav.locks.request(name, { signal: mine.signal }, function () {
        if (stopped || abort !== mine) return; // left meanwhile
        leader = true;
        connect();
        return new Promise(function (resolve) { release = resolve; }); // held until close, or the tab goes
      }).catch(function () {}); // aborted: left before it led
      post({ names: Object.keys(on), hello: me });
      hall.postMessage({ session: who.session });
    }

    // The stream and the tabs of the session left: the next tab leads, from lastId.
    function leave() {
      gen++;
      asking = false;
      clearTimeout(timer);
      if (es) es.close();
      es = null;
      esWho = null;
      leader = false;
      if (release) release();
      if (abort) abort.abort(); // or stop waiting to lead
      if (chan) chan.close();
      release = abort = chan = null;
    }

    // The browser's session is another: go to its stream (and tabs), from
    // scratch, since a position in one session's stream is not one in another's.
    function move(to) {
      var was = who;
      leave();
      tell('connecting');
      who = to;
      lastId = '';
      ready = null;
      attempt = 0;
      if (opts.onsession) opts.onsession({ user: to.user, session: to.session, previous: was });
      if (stopped) return; // closed by onsession
      if (shared) join(); else connect();
    }

    // Messages from the other tabs of this stream: of this session only.
    function heard(msg) {
      var m = msg.data;
      if (stopped || !who || m.sid !== who.session || (m.to && m.to !== me)) return;
      if (m.names) {
        want(m.names);
        if (m.hello) { // a new tab: tell it our names (should it lead one day) and, if live, that it is
          post({ names: Object.keys(on) });
          if (leader && ready) post({ to: m.hello, ev: { type: 'ready', data: ready.data, lastEventId: lastId }, own: true });
        }
      }
      var g = m.ev && take(m.ev, m.own) && handler(m.ev.type);
      if (g) g(m.ev);
      if (m.ev && m.ev.type === 'ready') tell('live');
      if (m.ev && m.ev.type === 'logout' && !stopped) loggedOut();
      if (m.state) tell(m.state, true);
      if (m.problem && opts.onproblem) opts.onproblem(m.problem);
      if (m.end) finish(m.end[0], m.end[1], m.end[2], true);
    }

    // The stream's state, to opts.onstate on a change; the leader tells the
    // other tabs of a loss (they learn it is live again from its ready).
    function tell(state, heardIt) {
      if (state === now) return;
      now = state;
      if (leader && !heardIt && state !== 'live') post({ state: state });
      if (opts.onstate) opts.onstate(state);
    }

    function want(list) {
      list.forEach(function (n) {
        if (names[n]) return;
        names[n] = 1;
        if (es) es.addEventListener(n, got);
      });
    }

    function post(m) {
      if (!chan) return;
      m.sid = who.session;
      chan.postMessage(m);
    }

    function close() {
      stopped = true;
      leave();
      if (hall) hall.close();
      hall = null;
    }

    // The end of the stream for good, for every tab.
    function finish(why, status, message, heardIt) {
      if (stopped) return;
      if (leader && !heardIt) post({ end: [why, status, message] });
      close();
      if (opts.onend) opts.onend(why, status, message);
    }

    if (shared) {
      hall = new BroadcastChannel('ssebridge sessions ' + abs);
      hall.onmessage = function (msg) {
        if (!stopped && who && msg.data && msg.data.session !== who.session) recheck();
      };
      start();
    } else {
      connect();
    }
    return {
      close: close,
      source: function () { return es; },
      isLeader: function () { return leader; },
      session: function () { return who && { user: who.user, session: who.session }; },
    };
  }
  global.SSEBridge = { open: open };
})(window);
