// Presence attacks with a read token against real y-websocket editors: a
// flood of client ids must not lock editors out, and a forged state or null
// for another editor's client id must change nothing.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import { readFileSync } from 'node:fs'
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { Weft, waitFor } from './lib/weft.js'

const SECRET = 'js-test-secret-0123456789abcdefghijkl'

const cleanups = []
after(async () => { for (const c of cleanups.reverse()) await c() })

async function startWeft (args = []) {
  const weft = await new Weft(['--auth-secret', SECRET, ...args]).start()
  cleanups.push(() => weft.cleanup())
  return weft
}

/** An HS256 JWT, as any backend that shares the secret would make it. */
function token (doc, mode) {
  const b64 = obj => Buffer.from(JSON.stringify(obj)).toString('base64url')
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ doc, mode, exp: Math.floor(Date.now() / 1000) + 600 })}`
  return `${body}.${createHmac('sha256', SECRET).update(body).digest('base64url')}`
}

/** A y-websocket editor with a write token; it records how it was closed. */
function editor (weft, room) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(weft.wsUrl, room, doc, {
    WebSocketPolyfill: WebSocket, disableBc: true, params: { token: token(room, 'write') }
  })
  const closes = []
  provider.on('connection-close', event => closes.push(event?.code))
  cleanups.push(() => { provider.destroy(); doc.destroy() })
  return { doc, provider, closes, text: doc.getText('t') }
}

/** An awareness message (y-protocols encoding) of [clientID, clock, json] entries. */
function awarenessFrame (entries) {
  const update = encoding.createEncoder()
  encoding.writeVarUint(update, entries.length)
  for (const [client, clock, json] of entries) {
    encoding.writeVarUint(update, client)
    encoding.writeVarUint(update, clock)
    encoding.writeVarString(update, json)
  }
  const frame = encoding.createEncoder()
  encoding.writeVarUint(frame, 1)
  encoding.writeVarUint8Array(frame, encoding.toUint8Array(update))
  return encoding.toUint8Array(frame)
}

/** How many states an awareness message holds (0 for any other message). */
function statesIn (data) {
  const message = decoding.createDecoder(new Uint8Array(data))
  if (decoding.readVarUint(message) !== 1) return 0
  return decoding.readVarUint(decoding.createDecoder(decoding.readVarUint8Array(message)))
}

/** A raw WebSocket with a read token. */
function reader (weft, room) {
  const ws = new WebSocket(`${weft.wsUrl}/${room}?token=${token(room, 'read')}`)
  ws.binaryType = 'arraybuffer'
  // Torn down mid-handshake after the test: nothing to report.
  ws.on('error', () => {})
  cleanups.push(() => ws.terminate())
  return ws
}

function rssKib (weft) {
  const status = readFileSync(`/proc/${weft.proc.pid}/status`, 'utf8')
  return Number(status.match(/VmRSS:\s+(\d+)/)[1])
}

test('a flood of presence client ids from a read token does not lock editors out', async () => {
  const weft = await startWeft()
  const room = 'flooded'
  const writer = editor(weft, room)
  await waitFor(() => writer.provider.synced, 10000, 'writer synced')
  writer.text.insert(0, 'written before the flood')
  await waitFor(async () => {
    const res = await fetch(`${weft.httpUrl}/docs/${room}/json`, { headers: { authorization: `Bearer ${token(room, 'read')}` } })
    return res.ok && (await res.json()).t === 'written before the flood'
  }, 10000, 'the text to be stored')
  const rssBefore = rssKib(weft)

  // The report's 40,000 client ids of 100 bytes in one message (4.6 MB),
  // and 10,000 (1.2 MB, just small enough to be decoded), in turns, each
  // sent again on a new connection whenever the server closes one, for the
  // whole test.
  const pad = 'x'.repeat(90)
  const flood = count => awarenessFrame(Array.from({ length: count }, (_, i) => [100000 + i, 1, `{"pad":"${pad}"}`]))
  const shapes = [flood(40000), flood(10000)]
  const floods = { sent: 0, handled: 0, closes: [], stop: false }
  const attack = () => {
    if (floods.stop) return
    const ws = reader(weft, room)
    const shape = shapes[floods.sent % 2]
    ws.on('open', () => { ws.send(shape); floods.sent++ })
    // The flood coming back (it was taken) or a close (refused): either way
    // the server has handled one.
    ws.on('message', data => { if (statesIn(data) >= 10000) floods.handled++ })
    ws.on('close', (code, reason) => { floods.handled++; floods.closes.push([code, reason.toString()]); attack() })
  }
  attack()
  await waitFor(() => floods.handled >= 10, 20000, 'the server to handle ten floods')

  const started = Date.now()
  const joiner = editor(weft, room)
  await waitFor(() => joiner.provider.synced && joiner.text.toString() === 'written before the flood',
    5000, () => `the joiner to sync within 5 s (its closes: ${joiner.closes})`)
  const joinMs = Date.now() - started
  joiner.provider.awareness.setLocalStateField('user', { name: 'Joiner' })
  await waitFor(() => writer.provider.awareness.getStates().get(joiner.doc.clientID)?.user?.name === 'Joiner',
    5000, 'the joiner\'s presence to reach the writer')
  floods.stop = true
  const grew = rssKib(weft) - rssBefore
  console.log(`presence flood: ${floods.sent} floods of 40,000 or 10,000 ids sent, the joiner synced in ${joinMs} ms, server RSS +${grew} KiB`)

  assert.deepEqual(joiner.closes, [], 'the joiner was never closed')
  assert.ok(floods.closes.length > 0)
  for (const [code, reason] of floods.closes) {
    assert.equal(code, 4400, reason)
    assert.match(reason, /at most 4 client ids|more than this document's presence allows/)
  }
  assert.ok(grew < 16 * 1024, `server RSS grew by ${grew} KiB`)
})

test('a forged state or null for another editor\'s client id changes nothing', async () => {
  const weft = await startWeft()
  const room = 'forged'
  const victim = editor(weft, room)
  const observer = editor(weft, room)
  await waitFor(() => victim.provider.synced && observer.provider.synced, 10000, 'both synced')
  victim.provider.awareness.setLocalStateField('user', { name: 'Victim' })
  const victimId = victim.doc.clientID
  const shown = () => observer.provider.awareness.getStates().get(victimId)?.user?.name
  await waitFor(() => shown() === 'Victim', 10000, 'the victim\'s presence to arrive')

  // Mallory, with a read token, overwrites the victim's id with a higher
  // clock, then erases it; each message also carries her own state.
  const mallory = reader(weft, room)
  await new Promise(resolve => mallory.on('open', resolve))
  const clock = victim.provider.awareness.meta.get(victimId).clock
  const MALLORY = 424242
  mallory.send(awarenessFrame([
    [victimId, clock + 10, '{"user":{"name":"Mallory pretending"}}'],
    [MALLORY, 1, '{"user":{"name":"Mallory","step":1}}']
  ]))
  mallory.send(awarenessFrame([
    [victimId, clock + 11, 'null'],
    [MALLORY, 2, '{"user":{"name":"Mallory","step":2}}']
  ]))
  let malloryClosed = null
  mallory.on('close', code => { malloryClosed = code })
  // Her second message reaching the observer means the room handled both.
  await waitFor(() => observer.provider.awareness.getStates().get(MALLORY)?.user?.step === 2,
    10000, 'Mallory\'s own presence to arrive')

  assert.equal(shown(), 'Victim', 'the observer still shows the victim')
  assert.equal(victim.provider.awareness.getLocalState()?.user?.name, 'Victim', 'the victim kept its own state')
  // Both editors re-send every state they are sent, Mallory's and each
  // other's: not theirs to publish, dropped, and nobody is closed for it.
  assert.deepEqual(victim.closes, [])
  assert.deepEqual(observer.closes, [])
  assert.equal(malloryClosed, null)
  // A newcomer sees the real thing too.
  const late = editor(weft, room)
  await waitFor(() => late.provider.awareness.getStates().get(MALLORY)?.user?.step === 2, 10000, 'the newcomer to see presence')
  assert.equal(late.provider.awareness.getStates().get(victimId)?.user?.name, 'Victim')
})
