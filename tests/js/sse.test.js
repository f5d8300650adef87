// Read-only viewers: weft's SseProvider on the npm `eventsource` package
// (WHATWG EventSource), next to unmodified y-websocket editors.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { EventSource } from 'eventsource'
import { SseProvider } from 'weft-web/sse-provider'
import { Weft, waitFor } from './lib/weft.js'

const cleanups = []
after(async () => { for (const c of cleanups.reverse()) await c() })

async function startWeft (args) {
  const weft = await new Weft(args).start()
  cleanups.push(() => weft.cleanup())
  return weft
}

function editor (weft, room) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(weft.wsUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  cleanups.push(() => { provider.destroy(); doc.destroy() })
  return { doc, provider, text: doc.getText('t') }
}

/**
 * An EventSource whose current connection the test can cut, as a flaky
 * network would. Every request's Last-Event-ID header and every event are
 * recorded.
 */
function droppableEventSource () {
  const log = { requests: [], events: [] }
  let current = null
  const fetchWithCut = async (url, init) => {
    log.requests.push({ lastEventId: new Headers(init.headers).get('last-event-id') })
    const res = await fetch(url, init)
    const reader = res.body.getReader()
    let stream
    const body = new ReadableStream({
      start (controller) { stream = controller },
      async pull (controller) {
        try {
          const { done, value } = await reader.read()
          if (done) controller.close()
          else controller.enqueue(value)
        } catch {} // the stream was cut meanwhile
      }
    })
    // A network failure, not an abort: EventSource must reconnect by itself.
    current = () => {
      stream.error(new TypeError('network connection lost'))
      reader.cancel().catch(() => {})
    }
    return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers })
  }
  class RecordingEventSource extends EventSource {
    constructor (url, init) {
      super(url, { ...init, fetch: fetchWithCut })
      for (const type of ['snapshot', 'update', 'awareness']) {
        this.addEventListener(type, e => log.events.push({ type, id: e.lastEventId }))
      }
    }
  }
  return { RecordingEventSource, log, cut: () => current() }
}

function viewer (weft, room, opts = {}) {
  const doc = new Y.Doc()
  const provider = new SseProvider(weft.httpUrl, room, doc, { EventSourcePolyfill: EventSource, ...opts })
  cleanups.push(() => { provider.destroy(); doc.destroy() })
  return { doc, provider, text: doc.getText('t') }
}

test('a viewer follows a y-websocket editor', async () => {
  const weft = await startWeft()
  const ed = editor(weft, 'follow')
  await waitFor(() => ed.provider.synced, 10000, 'editor synced')
  ed.text.insert(0, 'before the viewer. ')
  const v = viewer(weft, 'follow')
  await waitFor(() => v.provider.synced, 10000, 'viewer synced')
  for (let i = 0; i < 50; i++) ed.text.insert(ed.text.length, `${i} `)
  await waitFor(() => v.text.toString() === ed.text.toString(), 10000, 'viewer to converge')
  assert.equal(v.provider.status, 'connected')
  assert.match(v.provider.lastEventId, /^[0-9a-f]{16}-\d+$/)
})

test('a dropped viewer resumes with exactly the changes it missed', async () => {
  const weft = await startWeft(['--sse-retry-ms', '50'])
  const ed = editor(weft, 'drop')
  await waitFor(() => ed.provider.synced, 10000, 'editor synced')
  const { RecordingEventSource, log, cut } = droppableEventSource()
  const v = viewer(weft, 'drop', { EventSourcePolyfill: RecordingEventSource })
  await waitFor(() => v.provider.synced, 10000, 'viewer synced')

  let n = 0
  const typeSome = async count => {
    for (let i = 0; i < count; i++) {
      ed.text.insert(ed.text.length, `<${n++}>`)
      await new Promise(resolve => setTimeout(resolve, 2))
    }
  }
  await typeSome(20)
  await waitFor(() => v.text.toString() === ed.text.toString(), 10000, 'first convergence')
  cut()
  await typeSome(30) // typed while the viewer is away or reconnecting
  await waitFor(() => log.requests.length >= 2 && v.text.toString() === ed.text.toString(), 15000, 'resume and convergence')
  await typeSome(10)
  await waitFor(() => v.text.toString() === ed.text.toString(), 10000, 'live after resume')

  const reconnect = log.requests[1]
  assert.ok(reconnect.lastEventId, 'the reconnect carried Last-Event-ID')
  const snapshots = log.events.filter(e => e.type === 'snapshot')
  assert.equal(snapshots.length, 1, 'no second snapshot: the gap was replayed')
  const seqs = log.events.filter(e => e.id).map(e => Number(e.id.split('-')[1]))
  for (let i = 1; i < seqs.length; i++) {
    assert.equal(seqs[i], seqs[i - 1] + 1, `ids must continue without gap or repeat: ${seqs.join(',')}`)
  }
})

test('editors\' presence reaches the viewer and leaves with them', async () => {
  const weft = await startWeft()
  const ed = editor(weft, 'presence')
  await waitFor(() => ed.provider.synced, 10000, 'editor synced')
  const v = viewer(weft, 'presence')
  await waitFor(() => v.provider.synced, 10000, 'viewer synced')
  ed.provider.awareness.setLocalStateField('user', { name: 'Ed', color: '#0a0' })
  const states = () => v.provider.awareness.getStates()
  await waitFor(() => states().get(ed.doc.clientID)?.user?.name === 'Ed', 10000, 'presence to arrive')
  assert.ok(!states().has(v.doc.clientID), 'the viewer shows no presence of its own')
  ed.provider.shouldConnect = false
  ed.provider.ws.terminate()
  await waitFor(() => !states().has(ed.doc.clientID), 10000, 'presence to leave')
})

test('an update POSTed over HTTP reaches editors and viewers', async () => {
  const weft = await startWeft()
  const ed = editor(weft, 'post')
  await waitFor(() => ed.provider.synced, 10000, 'editor synced')
  const v = viewer(weft, 'post')
  await waitFor(() => v.provider.synced, 10000, 'viewer synced')

  const script = new Y.Doc()
  script.getText('t').insert(0, 'from a script')
  const res = await fetch(`${weft.httpUrl}/docs/post/updates`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream' },
    body: Y.encodeStateAsUpdate(script)
  })
  assert.equal(res.status, 200)
  const { id } = await res.json()
  await waitFor(() => ed.text.toString() === 'from a script', 10000, 'editor to get the post')
  await waitFor(() => v.text.toString() === 'from a script', 10000, 'viewer to get the post')
  await waitFor(() => v.provider.lastEventId === id, 10000, 'viewer to be at the posted id')
})
