// The unmodified npm y-websocket client against the real weft binary.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { Weft, waitFor } from './lib/weft.js'

const cleanups = []
after(async () => { for (const c of cleanups.reverse()) await c() })

async function startWeft (args) {
  const weft = await new Weft(args).start()
  cleanups.push(() => weft.cleanup())
  return weft
}

/**
 * A y-websocket editor: its Y.Doc and provider, torn down after the file.
 * BroadcastChannel is off: Node has one, and editors in the same process
 * would otherwise sync with each other without the server.
 */
function editor (weft, room, opts = {}) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(weft.wsUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true, ...opts })
  cleanups.push(() => { provider.destroy(); doc.destroy() })
  return { doc, provider, text: doc.getText('t') }
}

const synced = e => waitFor(() => e.provider.synced, 10000, 'provider synced')

// Deterministic pseudo-random numbers, so a failure can be replayed.
function rng (seed) {
  return () => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed / 0x7fffffff }
}

test('two providers converge', async () => {
  const weft = await startWeft()
  const a = editor(weft, 'pair')
  const b = editor(weft, 'pair')
  await Promise.all([synced(a), synced(b)])
  a.text.insert(0, 'hello ')
  b.text.insert(0, 'world ')
  await waitFor(() => a.text.toString() === b.text.toString() && a.text.length === 12, 10000, 'convergence')
  assert.ok(['hello world ', 'world hello '].includes(a.text.toString()))
})

test('three editors making concurrent random edits converge, and a late joiner gets the same text', async () => {
  const weft = await startWeft()
  const editors = [0, 1, 2].map(() => editor(weft, 'busy'))
  await Promise.all(editors.map(synced))
  const rand = rng(42)
  // Interleave bursts so edits really are concurrent: each editor makes
  // several local changes between network turns.
  for (let round = 0; round < 30; round++) {
    for (const e of editors) {
      for (let k = 0; k < 4; k++) {
        const len = e.text.length
        if (len > 0 && rand() < 0.3) {
          const at = Math.floor(rand() * len)
          e.text.delete(at, Math.min(len - at, 1 + Math.floor(rand() * 3)))
        } else {
          e.text.insert(Math.floor(rand() * (len + 1)), String.fromCharCode(97 + Math.floor(rand() * 26)))
        }
      }
    }
    await new Promise(resolve => setImmediate(resolve))
  }
  const same = () => editors.every(e => e.text.toString() === editors[0].text.toString())
  await waitFor(same, 15000, 'three editors to converge')
  const final = editors[0].text.toString()
  assert.ok(final.length > 0)
  const late = editor(weft, 'busy')
  await synced(late)
  await waitFor(() => late.text.toString() === final, 10000, 'late joiner to catch up')
  assert.deepEqual(Y.encodeStateVector(late.doc), Y.encodeStateVector(editors[0].doc))
})

test('presence appears, and disappears at once when an editor drops', async () => {
  const weft = await startWeft()
  const a = editor(weft, 'cursors')
  const b = editor(weft, 'cursors')
  await Promise.all([synced(a), synced(b)])
  a.provider.awareness.setLocalStateField('user', { name: 'Ann', color: '#f00' })
  await waitFor(() => b.provider.awareness.getStates().get(a.doc.clientID)?.user?.name === 'Ann', 10000, 'presence to arrive')

  // Drop the socket without the client saying goodbye (no null state sent).
  a.provider.shouldConnect = false
  const started = Date.now()
  a.provider.ws.terminate()
  await waitFor(() => !b.provider.awareness.getStates().has(a.doc.clientID), 10000, 'presence to vanish')
  // The y-protocols timeout would take 30 s; the server's removal is immediate.
  assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`)
})

test('after kill -9 and a restart, every edit any client saw is still there', async () => {
  const weft = await startWeft()
  const writers = [editor(weft, 'crash'), editor(weft, 'crash')]
  const observer = editor(weft, 'crash')
  await Promise.all([...writers, observer].map(synced))

  // Each writer appends unique tokens; the observer records every token it sees.
  const seen = new Set()
  observer.text.observe(() => {
    for (const tok of observer.text.toString().match(/<[^>]+>/g) || []) seen.add(tok)
  })
  let n = 0
  const typing = setInterval(() => {
    writers.forEach((w, i) => w.text.insert(w.text.length, `<${i}-${n}>`))
    n++
  }, 5)
  await waitFor(() => seen.size >= 60, 15000, 'observer to see edits')
  await weft.kill9()
  clearInterval(typing)
  const sawBeforeCrash = new Set(seen)

  await weft.start()
  const fresh = editor(weft, 'crash')
  await synced(fresh)
  const recovered = fresh.text.toString()
  const missing = [...sawBeforeCrash].filter(tok => !recovered.includes(tok))
  assert.deepEqual(missing, [], `${missing.length} of ${sawBeforeCrash.size} seen tokens lost`)

  // The old editors reconnect by themselves and everyone converges.
  await waitFor(() => [...writers, observer].every(e => e.provider.wsconnected && e.provider.synced), 20000, 'editors to reconnect')
  const all = [...writers, observer, fresh]
  await waitFor(() => all.every(e => e.text.toString() === writers[0].text.toString()), 15000, 'convergence after restart')
})
