// The unmodified y-websocket client with tokens: the two-step flow
// (backend asks weft for a token, browser connects with it) and the 4401
// close that tells a client its token is no good.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { Weft, waitFor } from './lib/weft.js'

const SECRET = 'js-test-secret-0123456789abcdefghijkl'
const ADMIN = 'js-admin-key-0123456789abcdef012345'

const cleanups = []
after(async () => { for (const c of cleanups.reverse()) await c() })

/** An HS256 JWT, as any backend that shares the secret would make it. */
function jwt (claims) {
  const b64 = obj => Buffer.from(JSON.stringify(obj)).toString('base64url')
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`
}

function editor (weft, room, token) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(weft.wsUrl, room, doc, {
    WebSocketPolyfill: WebSocket, disableBc: true, params: { token }
  })
  const closes = []
  provider.on('connection-close', event => closes.push(event?.code))
  cleanups.push(() => { provider.destroy(); doc.destroy() })
  return { doc, provider, closes, text: doc.getText('t') }
}

test('a token from POST /auth/token lets y-websocket edit', async () => {
  const weft = await new Weft(['--auth-secret', SECRET, '--admin-key', ADMIN]).start()
  cleanups.push(() => weft.cleanup())
  const res = await fetch(`${weft.httpUrl}/auth/token`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ doc: 'secure', mode: 'write', ttl_secs: 600 })
  })
  assert.equal(res.status, 200)
  const { token } = await res.json()
  const a = editor(weft, 'secure', token)
  const b = editor(weft, 'secure', token)
  await waitFor(() => a.provider.synced && b.provider.synced, 10000, 'both synced')
  a.text.insert(0, 'authorised edit')
  await waitFor(() => b.text.toString() === 'authorised edit', 10000, 'edit to arrive')
})

test('y-websocket sees 4401 for an expired token', async () => {
  const weft = await new Weft(['--auth-secret', SECRET]).start()
  cleanups.push(() => weft.cleanup())
  const expired = jwt({ doc: 'secure', mode: 'write', exp: Math.floor(Date.now() / 1000) - 60 })
  const e = editor(weft, 'secure', expired)
  await waitFor(() => e.closes.length > 0, 10000, 'the server to close')
  assert.equal(e.closes[0], 4401)
  assert.equal(e.provider.synced, false)
  e.provider.shouldConnect = false
})
