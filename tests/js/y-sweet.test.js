// The unmodified y-sweet SDK and client against weft: a backend mints
// client tokens with @y-sweet/sdk's DocumentManager (the connection string
// carries weft's admin key), two @y-sweet/client providers converge and
// learn that their changes are stored, a read-only token cannot write, and
// a y-websocket editor on the same document sees it all.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { DocumentManager } from '@y-sweet/sdk'
import { createYjsProvider, STATUS_CONNECTED } from '@y-sweet/client'
import { Weft, waitFor } from './lib/weft.js'

const SECRET = 'js-ysweet-secret-0123456789abcdefghijk'
const ADMIN = 'js-ysweet-admin-key-0123456789abcdef01'

const cleanups = []
after(async () => { for (const c of cleanups.reverse()) await c() })

/** A y-sweet client for `docId`, its tokens from `manager` (as an app's auth endpoint would). */
function ysweetClient (manager, docId, authorization = 'full') {
  const doc = new Y.Doc()
  const provider = createYjsProvider(doc, docId,
    () => manager.getClientToken(docId, { authorization }),
    { WebSocketPolyfill: WebSocket, showDebuggerLink: false })
  const statuses = []
  provider.on('connection-status', s => statuses.push(s))
  const local = []
  provider.on('local-changes', pending => local.push(pending))
  cleanups.push(() => { stop(provider); doc.destroy() })
  return { doc, provider, statuses, local, text: doc.getText('t') }
}

/**
 * Stops a y-sweet provider for good. @y-sweet/client 0.9 has no full stop:
 * destroy() leaves its heartbeat timer, whose timeout reconnects (and keeps
 * the process alive), and a closing socket reconnects too.
 */
function stop (provider) {
  provider.connect = async () => {}
  provider.resetHeartbeat = () => {}
  provider.setConnectionTimeout = () => {}
  provider.clearHeartbeat()
  provider.clearConnectionTimeout()
  if (provider.websocket) {
    provider.websocket.onclose = null
    provider.websocket.onerror = null
  }
  provider.disconnect()
  provider.destroy()
}

test('@y-sweet/sdk and @y-sweet/client work against weft unmodified', async () => {
  const weft = await new Weft(['--auth-secret', SECRET, '--admin-key', ADMIN]).start()
  cleanups.push(() => weft.cleanup())
  const manager = new DocumentManager(`ys://${ADMIN}@${weft.addr}`)

  assert.deepEqual(await manager.checkStore(), { ok: true })
  const { docId } = await manager.createDoc()
  assert.match(docId, /^[0-9a-f]{32}$/)
  const named = await manager.createDoc('notes')
  assert.equal(named.docId, 'notes')
  const token = await manager.getClientToken('notes', { authorization: 'full' })
  assert.equal(token.docId, 'notes')
  assert.equal(token.authorization, 'full')
  assert.ok(token.token, 'a weft document token')

  // The backend seeds the document over HTTP.
  const seed = new Y.Doc()
  seed.getText('t').insert(0, 'seeded. ')
  await manager.updateDoc('notes', Y.encodeStateAsUpdate(seed))

  const a = ysweetClient(manager, 'notes')
  const b = ysweetClient(manager, 'notes')
  await waitFor(() => a.provider.status === STATUS_CONNECTED && b.provider.status === STATUS_CONNECTED,
    10000, 'both y-sweet clients to connect')
  await waitFor(() => a.text.toString() === 'seeded. ' && b.text.toString() === 'seeded. ',
    10000, 'both to sync the seeded text')

  a.text.insert(a.text.length, 'from a. ')
  b.text.insert(b.text.length, 'from b.')
  await waitFor(() => a.text.toString() === b.text.toString() && a.text.length === 'seeded. from a. from b.'.length,
    10000, 'the clients to converge')
  // Each learned its changes are stored (y-sweet's sync status answered):
  // the client says "no local changes" only once an acknowledgement
  // covers its newest one. (Whether it first says "local changes" depends
  // on where its version stood when the edit came, so that is not asked.)
  await waitFor(() => a.local.at(-1) === false && b.local.at(-1) === false,
    10000, 'both clients to see their changes acknowledged')
  assert.equal(a.provider.hasLocalChanges, false)
  assert.equal(b.provider.hasLocalChanges, false)

  // A y-websocket editor on the same document sees what they typed, and
  // they see its edit.
  const wsToken = await manager.getClientToken('notes')
  const doc = new Y.Doc()
  const ywebsocket = new WebsocketProvider(weft.wsUrl, 'notes', doc,
    { WebSocketPolyfill: WebSocket, disableBc: true, params: { token: wsToken.token } })
  cleanups.push(() => { ywebsocket.destroy(); doc.destroy() })
  await waitFor(() => doc.getText('t').toString() === a.text.toString(), 10000, 'y-websocket to sync')
  doc.getText('t').insert(0, '> ')
  await waitFor(() => a.text.toString().startsWith('> ') && b.text.toString().startsWith('> '),
    10000, 'the y-websocket edit to reach the y-sweet clients')

  // The backend reads it all back.
  const back = new Y.Doc()
  Y.applyUpdate(back, await manager.getDocAsUpdate('notes'))
  assert.equal(back.getText('t').toString(), a.text.toString())
  // A document nobody wrote reads as empty, as y-sweet answers.
  const empty = new Y.Doc()
  Y.applyUpdate(empty, await manager.getDocAsUpdate(docId))
  assert.equal(empty.getText('t').toString(), '')
})

test('a read-only y-sweet client token cannot write, and a wrong server token is refused', async () => {
  const weft = await new Weft(['--auth-secret', SECRET, '--admin-key', ADMIN]).start()
  cleanups.push(() => weft.cleanup())
  const manager = new DocumentManager(`ys://${ADMIN}@${weft.addr}`)
  const writer = ysweetClient(manager, 'guarded')
  const reader = ysweetClient(manager, 'guarded', 'read-only')
  await waitFor(() => writer.provider.status === STATUS_CONNECTED && reader.provider.status === STATUS_CONNECTED,
    10000, 'both to connect')
  writer.text.insert(0, 'written')
  await waitFor(() => reader.text.toString() === 'written', 10000, 'the reader to see the write')

  reader.text.insert(0, 'not allowed ')
  // The writer never gets it, and the stored document does not hold it.
  writer.text.insert(writer.text.length, '!')
  await waitFor(async () => {
    const stored = new Y.Doc()
    Y.applyUpdate(stored, await manager.getDocAsUpdate('guarded'))
    return stored.getText('t').toString() === 'written!'
  }, 10000, 'the writer\'s later change to be stored')
  assert.equal(writer.text.toString(), 'written!')

  const token = await manager.getClientToken('guarded', { authorization: 'read-only' })
  const res = await fetch(`${token.baseUrl}/update`, {
    method: 'POST', headers: { authorization: `Bearer ${token.token}` }, body: Y.encodeStateAsUpdate(reader.doc)
  })
  assert.equal(res.status, 403)

  const wrong = new DocumentManager(`ys://not-the-admin-key-at-all-0123456789@${weft.addr}`)
  await assert.rejects(wrong.getClientToken('guarded'), /InvalidAuthProvided|401|403/)
})
