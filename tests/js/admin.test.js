// Operators and live clients: a restore reaches connected y-websocket
// editors and an SSE viewer without any of them reconnecting, and an
// exported snapshot loads with Y.applyUpdate.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { EventSource } from 'eventsource'
import { SseProvider } from 'weft-web/sse-provider'
import { Weft, WEFT_BIN, waitFor } from './lib/weft.js'

const ADMIN = 'js-admin-key-0123456789abcdef012345'
const cleanups = []
after(async () => { for (const c of cleanups.reverse()) await c() })

function editor (weft, room) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(weft.wsUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  const closes = []
  provider.on('connection-close', e => closes.push(e?.code))
  cleanups.push(() => { provider.destroy(); doc.destroy() })
  return { doc, provider, closes }
}

/** What a person would see: formatted text, the map, the XML. */
function content (doc) {
  return {
    prose: doc.getText('prose').toDelta(),
    meta: doc.getMap('meta').toJSON(),
    xml: doc.getXmlFragment('xml').toString()
  }
}

async function admin (weft, method, path, body) {
  const res = await fetch(`${weft.httpUrl}/admin${path}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
    body: body && JSON.stringify(body)
  })
  assert.ok(res.ok, `${method} ${path}: ${res.status} ${await res.clone().text()}`)
  return res.json()
}

test('a live restore reaches editors and viewers without reconnecting', async () => {
  const weft = await new Weft(['--admin-key', ADMIN]).start()
  cleanups.push(() => weft.cleanup())
  const a = editor(weft, 'restore')
  const b = editor(weft, 'restore')
  await waitFor(() => a.provider.synced && b.provider.synced, 10000, 'editors synced')

  a.doc.transact(() => {
    const prose = a.doc.getText('prose')
    prose.insert(0, 'Hello bold world')
    prose.format(6, 4, { bold: true })
    prose.insert(prose.length, '!', { italic: true })
    a.doc.getMap('meta').set('title', 'First draft')
    a.doc.getMap('meta').set('tags', ['a', 'b'])
    const p = new Y.XmlElement('p')
    p.setAttribute('class', 'lead')
    p.insert(0, [new Y.XmlText('hello')])
    a.doc.getXmlFragment('xml').insert(0, [p])
  })
  const snapshotContent = content(a.doc)
  await waitFor(() => JSON.stringify(content(b.doc)) === JSON.stringify(snapshotContent), 10000, 'b to converge')
  const { id } = await admin(weft, 'POST', '/docs/restore/snapshots')

  const viewerDoc = new Y.Doc()
  const viewer = new SseProvider(weft.httpUrl, 'restore', viewerDoc, { EventSourcePolyfill: EventSource })
  cleanups.push(() => { viewer.destroy(); viewerDoc.destroy() })
  await waitFor(() => viewer.synced, 10000, 'viewer synced')
  const sockets = [a.provider.ws, b.provider.ws]

  // Later edits by both editors, on every root.
  a.doc.getText('prose').delete(0, 6)
  b.doc.getText('prose').format(0, 3, { underline: true })
  b.doc.getMap('meta').set('title', 'Second draft')
  b.doc.getMap('meta').set('extra', 42)
  a.doc.getXmlFragment('xml').insert(1, [new Y.XmlElement('hr')])
  await waitFor(() => JSON.stringify(content(a.doc)) === JSON.stringify(content(b.doc)), 10000, 'edits to converge')
  assert.notDeepEqual(content(a.doc), snapshotContent)

  const result = await admin(weft, 'POST', '/docs/restore/restore', { snapshot: id })
  assert.ok(result.change, 'the restore is a change')
  for (const [who, doc] of [['a', a.doc], ['b', b.doc], ['viewer', viewerDoc]]) {
    await waitFor(() => JSON.stringify(content(doc)) === JSON.stringify(snapshotContent), 10000, `${who} to show the snapshot`)
  }
  assert.deepEqual(content(a.doc), snapshotContent)
  assert.deepEqual([a.provider.ws, b.provider.ws], sockets, 'nobody reconnected')
  assert.deepEqual([...a.closes, ...b.closes], [])
  const history = await admin(weft, 'GET', '/docs/restore/snapshots')
  assert.equal(history.at(-1).reason, 'restore')

  // The exported snapshot loads in Yjs and matches `inspect`.
  const dir = mkdtempSync(join(tmpdir(), 'weft-export-'))
  const file = join(dir, 'snap.yjs')
  const server = ['--server', weft.httpUrl, '--admin-key', ADMIN]
  execFileSync(WEFT_BIN, ['snapshot', 'export', 'restore', '--snapshot', String(id), '-o', file, ...server])
  const inspected = JSON.parse(execFileSync(WEFT_BIN, ['snapshot', 'inspect', 'restore', '--snapshot', String(id), ...server]))
  const loaded = new Y.Doc()
  Y.applyUpdate(loaded, readFileSync(file))
  assert.deepEqual(content(loaded), snapshotContent)
  assert.deepEqual(inspected, {
    prose: loaded.getText('prose').toString(),
    meta: loaded.getMap('meta').toJSON(),
    xml: loaded.getXmlFragment('xml').toString()
  })
})
