// The unmodified @hocuspocus/provider against weft: several documents on
// one socket (HocuspocusProviderWebsocket shared by providers), each with
// its own token: write, read-only (the provider learns its scope, and its
// changes are refused) and one for another document (refused alone, the
// others go on); a y-websocket editor and an SSE viewer on the same
// document; stateless messages; session-aware providers of one document
// on one socket; and a token that is fetched again before it ends.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { readVarInt } from 'lib0/decoding'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'
import { Weft, waitFor } from './lib/weft.js'

const SECRET = 'js-hocuspocus-secret-0123456789abcdefgh'

const cleanups = []
after(async () => { for (const c of cleanups.reverse()) await c() })

/** An HS256 JWT, as any backend that shares the secret would make it. */
function jwt (doc, mode, ttlSecs = 600) {
  const b64 = obj => Buffer.from(JSON.stringify(obj)).toString('base64url')
  const claims = { doc, mode, exp: Math.floor(Date.now() / 1000) + ttlSecs, sub: 'js' }
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`
}

async function startWeft (args = []) {
  const weft = await new Weft(args).start()
  cleanups.push(() => weft.cleanup())
  return weft
}

/** One socket, as an app that opens several documents makes it. */
function socket (url, extra = {}) {
  const ws = new HocuspocusProviderWebsocket({ url, WebSocketPolyfill: WebSocket, ...extra })
  cleanups.push(() => ws.destroy())
  return ws
}

/** A provider for `name` on `websocketProvider`, with what it heard. */
function provider (websocketProvider, name, token, extra = {}) {
  const p = new HocuspocusProvider({ websocketProvider, name, token, ...extra })
  const heard = { denied: [], scopes: [], stateless: [], closes: [], statuses: [] }
  p.on('authenticationFailed', ({ reason }) => heard.denied.push(reason))
  p.on('authenticated', ({ scope }) => heard.scopes.push(scope))
  p.on('stateless', ({ payload }) => heard.stateless.push(payload))
  p.on('close', ({ event }) => heard.closes.push(event))
  // Sync status (type 8): the server's word on each change, true once stored.
  p.on('message', ({ message }) => {
    message.readVarString()
    if (message.readVarUint() === 8) heard.statuses.push(readVarInt(message.decoder) === 1)
  })
  p.attach()
  cleanups.push(() => p.destroy())
  return { p, heard, text: p.document.getText('t') }
}

function yWebsocket (weft, room, token) {
  const doc = new Y.Doc()
  const p = new WebsocketProvider(weft.wsUrl, room, doc, {
    WebSocketPolyfill: WebSocket, disableBc: true, params: token ? { token } : {}
  })
  cleanups.push(() => { p.destroy(); doc.destroy() })
  return { p, text: doc.getText('t') }
}

test('documents on one socket, each with its own token, beside y-websocket and SSE', async () => {
  const weft = await startWeft(['--auth-secret', SECRET])
  const shared = socket(`ws://${weft.addr}/hocuspocus`)
  const notes = provider(shared, 'notes', jwt('notes', 'write'))
  const plans = provider(shared, 'plans', jwt('plans', 'write'))
  const reader = provider(shared, 'memo', jwt('memo', 'read'))
  const wrong = provider(shared, 'secret', jwt('notes', 'write'))

  await waitFor(() => notes.p.isSynced && plans.p.isSynced && reader.p.isSynced, 10000, 'three documents synced')
  await waitFor(() => wrong.heard.denied.length > 0, 10000, 'the wrong-document token refused')
  assert.match(wrong.heard.denied[0], /notes/)
  assert.equal(wrong.p.isSynced, false)
  assert.deepEqual([notes.heard.scopes, reader.heard.scopes], [['read-write'], ['readonly']])
  assert.equal(reader.p.authorizedScope, 'readonly')

  // A y-websocket editor and an SSE viewer on the same document as one
  // of the providers; edits cross both ways.
  const editor = yWebsocket(weft, 'notes', jwt('notes', 'write'))
  const viewer = await fetch(`${weft.httpUrl}/sse/notes?token=${jwt('notes', 'read')}`)
  assert.equal(viewer.status, 200)
  const events = viewer.body.getReader()
  notes.text.insert(0, 'from Hocuspocus. ')
  await waitFor(() => editor.text.toString() === 'from Hocuspocus. ', 10000, 'y-websocket to see it')
  editor.text.insert(editor.text.length, 'from y-websocket.')
  await waitFor(() => notes.text.toString() === 'from Hocuspocus. from y-websocket.', 10000, 'the provider to see it')
  // Every change is acknowledged once stored.
  await waitFor(() => !notes.p.hasUnsyncedChanges, 10000, 'the provider to hear its change is stored')
  let seen = ''
  await waitFor(async () => {
    const { value } = await events.read()
    seen += Buffer.from(value).toString()
    return seen.includes('event: update')
  }, 10000, 'the viewer to get an update event')
  await events.cancel()

  // The other document on the socket is its own.
  plans.text.insert(0, 'plans')
  await waitFor(() => !plans.p.hasUnsyncedChanges, 10000, 'plans stored')
  const stored = await fetch(`${weft.httpUrl}/docs/plans/json?token=${jwt('plans', 'read')}`)
  assert.deepEqual(await stored.json(), { t: 'plans' })

  // The read-only provider's change is refused: never acknowledged, never stored.
  await waitFor(() => !reader.p.hasUnsyncedChanges, 10000, 'the reader\'s opening sync acknowledged')
  const before = reader.heard.statuses.length
  reader.text.insert(0, 'not allowed')
  await waitFor(() => reader.heard.statuses.length > before, 10000, 'the server\'s word on the change')
  assert.deepEqual(reader.heard.statuses.slice(before), [false])
  assert.equal(reader.p.hasUnsyncedChanges, true)
  const memo = await fetch(`${weft.httpUrl}/docs/memo/json?token=${jwt('memo', 'read')}`)
  assert.equal(memo.status, 404)

  // The refusal closed nothing: the socket still carries the others.
  notes.text.insert(0, '> ')
  await waitFor(() => editor.text.toString().startsWith('> '), 10000, 'a later edit to arrive')
  assert.equal(shared.status, 'connected')
})

test('stateless messages reach the document\'s other providers', async () => {
  const weft = await startWeft()
  const a = provider(socket(`ws://${weft.addr}/hocuspocus`), 'chat', '')
  // The bare server URL, as Hocuspocus apps are usually configured.
  const b = provider(socket(`ws://${weft.addr}`), 'chat', '')
  const elsewhere = provider(socket(`ws://${weft.addr}`), 'other', '')
  await waitFor(() => a.p.isSynced && b.p.isSynced && elsewhere.p.isSynced, 10000, 'synced')
  a.p.sendStateless(JSON.stringify({ kind: 'comment', text: 'hi' }))
  await waitFor(() => b.heard.stateless.length === 1, 10000, 'the other provider to hear it')
  assert.deepEqual(JSON.parse(b.heard.stateless[0]), { kind: 'comment', text: 'hi' })
  b.p.sendStateless('back')
  await waitFor(() => a.heard.stateless.length === 1, 10000, 'the first provider to hear the answer')
  assert.deepEqual([a.heard.stateless, b.heard.stateless.length, elsewhere.heard.stateless], [['back'], 1, []])
})

test('session-aware providers share one socket for one document', async () => {
  const weft = await startWeft()
  const shared = socket(`ws://${weft.addr}/hocuspocus`)
  const one = provider(shared, 'twice', '', { sessionAwareness: true })
  const two = provider(shared, 'twice', '', { sessionAwareness: true })
  await waitFor(() => one.p.isSynced && two.p.isSynced, 10000, 'both synced')
  one.text.insert(0, 'one')
  await waitFor(() => two.text.toString() === 'one', 10000, 'the second session to see the first')
  one.p.setAwarenessField('user', { name: 'Ada' })
  await waitFor(() => [...two.p.awareness.getStates().values()].some(s => s.user?.name === 'Ada'),
    10000, 'presence to cross sessions')
})

test('a token is fetched again before it ends, and the document stays open', async () => {
  const weft = await startWeft(['--auth-secret', SECRET])
  let fetched = 0
  // Each token lives 4 s; weft asks for a fresh one before that.
  const p = provider(socket(`ws://${weft.addr}/hocuspocus`), 'renewed', async () => {
    fetched += 1
    return jwt('renewed', 'write', 4)
  })
  await waitFor(() => p.p.isSynced, 10000, 'synced')
  await waitFor(() => fetched >= 3, 15000, 'two fresh tokens to be asked for')
  assert.deepEqual(p.heard.denied, [])
  p.text.insert(0, 'still writing')
  await waitFor(() => !p.p.hasUnsyncedChanges, 10000, 'the change stored')
})

test('forced syncs are acknowledged as Hocuspocus acknowledges them', async () => {
  const weft = await startWeft()
  const p = provider(socket(`ws://${weft.addr}/hocuspocus`), 'forced', '', { forceSyncInterval: 300 })
  await waitFor(() => p.p.isSynced, 10000, 'synced')
  p.text.insert(0, 'typed')
  // Each forced sync counts as unsynced until weft answers it as
  // Hocuspocus' server does: its step 2, then its own step 1, whose
  // answer is acknowledged.
  const before = p.heard.statuses.length
  await waitFor(() => p.heard.statuses.length >= before + 4, 10000, 'the change and three forced syncs acknowledged')
  await waitFor(() => !p.p.hasUnsyncedChanges, 10000, 'nothing unsynced')
})

test('pings keep a quiet provider connected', async () => {
  const weft = await startWeft(['--ping-interval', '500ms'])
  // No awareness and no edits (nothing else to hear), and a short
  // patience: without weft's pings this provider would take its socket
  // for dead after 2 s.
  const statuses = []
  const quiet = socket(`ws://${weft.addr}/hocuspocus`, {
    messageReconnectTimeout: 2000,
    onStatus: ({ status }) => statuses.push(status)
  })
  const p = provider(quiet, 'quiet', '', { awareness: null })
  await waitFor(() => p.p.isSynced, 10000, 'synced')
  // 5 s of quiet: more than twice the provider's patience.
  await new Promise(resolve => setTimeout(resolve, 5000))
  assert.deepEqual(statuses.filter(s => s === 'disconnected'), [])
})

test('a socket that sends too much before a token is told why, not reset', async () => {
  const weft = await startWeft(['--auth-secret', SECRET])
  const codes = []
  for (let i = 0; i < 10; i++) {
    codes.push(await new Promise(resolve => {
      const ws = new WebSocket(`ws://${weft.addr}/hocuspocus`)
      ws.on('error', () => {})
      ws.on('close', code => resolve(code))
      ws.on('open', () => {
        // 1 MiB in 4 KiB messages for 16 documents, and never a token.
        for (let f = 0; f < 240; f++) {
          const name = Buffer.from(`doc-${f % 16}`)
          ws.send(Buffer.concat([Buffer.from([name.length]), name, Buffer.from([0]), Buffer.alloc(4090, 7)]))
        }
      })
    }))
  }
  assert.deepEqual(codes, Array(10).fill(4400))
})
