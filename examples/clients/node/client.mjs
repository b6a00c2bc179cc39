// A Node client of ssebridge with npm's eventsource (docs/CLIENTS.md).
//
//   SSEBRIDGE_URL=http://127.0.0.1:8080/events SSEBRIDGE_TOKEN=... node client.mjs chat dm
//
// It prints one JSON line per event on stdout ({"event","id","data"}) and
// what it does on stderr (never the token). The arguments name the events
// to listen to beside ssebridge's own (ready, reset, logout) and message:
// EventSource has no catch-all listener.
//
// - The token goes in an Authorization: Bearer header, added by the
//   `fetch` option (EventSource itself cannot send headers).
// - Resume: eventsource sends Last-Event-ID when it reconnects by itself;
//   when this client opens a new EventSource (after a refusal) it adds the
//   last id it saw, so durable events published meanwhile are replayed.
//   SSEBRIDGE_LAST_EVENT_ID starts from a kept id.
// - Refusals: EventSource gives up for good on any non-200 answer. 400,
//   401 and 403 are final (exit 2); anything else (429, 503, a proxy's
//   502) is retried after Retry-After, or with jittered exponential
//   backoff.
// - `event: logout` ends the session: close and exit 0. Reconnecting would
//   open a stream again if only the stream was ended.
// - The keep-alive interval: eventsource 5 unrefs its reconnect timer, so
//   a process with nothing else to do exits while it waits to reconnect.
//   A handle of our own keeps it up until we close on purpose.
import {EventSource} from 'eventsource'

const url = process.env.SSEBRIDGE_URL || 'http://127.0.0.1:8080/events'
const token = process.env.SSEBRIDGE_TOKEN
if (!token) {
  console.error('ssebridge client: set SSEBRIDGE_TOKEN')
  process.exit(1)
}
const names = ['ready', 'reset', 'logout', 'message', ...process.argv.slice(2)]

let lastId = process.env.SSEBRIDGE_LAST_EVENT_ID || ''
let es = null
let failures = 0 // refusals and failed connections in a row, for the backoff
let retryAfter = 0 // the last refusal's Retry-After, in seconds
const keepAlive = setInterval(() => {}, 1 << 30)

const log = (msg) => console.error(`ssebridge client: ${msg}`)

function stop(code, why) {
  log(why)
  if (es) es.close()
  clearInterval(keepAlive)
  process.exitCode = code
}

function backoff() {
  failures++
  const base = retryAfter > 0 ? retryAfter * 1000 : Math.min(30000, 1000 * 2 ** (failures - 1))
  return Math.round(base * (1 + Math.random() / 2)) // up to half again: not all clients at once
}

function open() {
  es = new EventSource(url, {
    fetch: async (input, init) => {
      const headers = {...init.headers, Authorization: `Bearer ${token}`}
      // eventsource adds Last-Event-ID itself on its own reconnects; a new
      // EventSource knows none, so the kept id is added here.
      if (lastId && !headers['Last-Event-ID']) headers['Last-Event-ID'] = lastId
      const res = await fetch(input, {...init, headers})
      retryAfter = res.status === 200 ? 0 : Number(res.headers.get('retry-after')) || 0
      return res
    },
  })
  for (const name of names) {
    es.addEventListener(name, (e) => {
      if (e.lastEventId) lastId = e.lastEventId
      console.log(JSON.stringify({event: name, id: e.lastEventId, data: e.data}))
      if (name === 'ready') failures = 0
      if (name === 'logout') stop(0, 'logged out: stopping')
    })
  }
  es.addEventListener('error', (e) => {
    if (es.readyState === EventSource.CONNECTING) {
      // The stream dropped or a connection failed: eventsource reconnects
      // by itself after the server's retry: hint, with Last-Event-ID.
      log(`connection lost (${e.message || 'no message'}); eventsource reconnects`)
      return
    }
    // CLOSED: a non-200 answer, which eventsource never retries.
    if ([400, 401, 403].includes(e.code)) {
      stop(2, `refused with ${e.code}: stopping (a new session is needed)`)
      return
    }
    es.close()
    const delay = backoff()
    log(`refused (${e.code || e.message}); retrying in ${delay} ms`)
    setTimeout(open, delay)
  })
}

process.on('SIGTERM', () => stop(0, 'SIGTERM: closing'))
process.on('SIGINT', () => stop(0, 'SIGINT: closing'))
open()
