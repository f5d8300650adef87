// Cluster mode with real clients: three weft nodes on one redis-server,
// unmodified y-websocket editors behind a round-robin TCP balancer (no
// sticky sessions) and the SSE viewer provider on a third node.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { EventSource } from 'eventsource'
import { SseProvider } from 'weft-web/sse-provider'
import { Weft, waitFor } from './lib/weft.js'

const cleanups = []
after(async () => { for (const c of cleanups.reverse()) await c() })

function freePort () {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
    s.on('error', reject)
  })
}

function canConnect (port) {
  return new Promise(resolve => {
    const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true) })
    s.on('error', () => resolve(false))
  })
}

/** redis-server on loopback, fsyncing every write. */
async function startRedis () {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'weft-redis-'))
  const proc = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--save', '',
    '--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir], { stdio: 'ignore' })
  cleanups.push(async () => { proc.kill('SIGKILL'); rmSync(dir, { recursive: true, force: true }) })
  await waitFor(() => canConnect(port), 10000, 'redis-server listening')
  return `redis://127.0.0.1:${port}`
}

/** A TCP balancer: each new connection goes to the next backend in turn. */
async function roundRobin (backends) {
  let next = 0
  const server = net.createServer(client => {
    const [host, port] = backends[next++ % backends.length].split(':')
    const upstream = net.connect(Number(port), host)
    client.pipe(upstream).pipe(client)
    upstream.on('error', () => client.destroy())
    client.on('error', () => upstream.destroy())
  })
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  cleanups.push(() => new Promise(resolve => server.close(resolve)))
  return `ws://127.0.0.1:${server.address().port}/ws`
}

function editor (wsUrl, room) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(wsUrl, room, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  cleanups.push(() => { provider.destroy(); doc.destroy() })
  return { doc, provider, text: doc.getText('t') }
}

test('editors on different nodes converge, a viewer on a third sees them, and a killed node loses nothing', async () => {
  const redis = await startRedis()
  const nodes = []
  for (let i = 0; i < 3; i++) {
    const node = await new Weft(['--redis', redis]).start()
    cleanups.push(() => node.cleanup())
    nodes.push(node)
  }
  const [a, b, c] = nodes
  const balanced = await roundRobin([a.addr, b.addr])

  const one = editor(balanced, 'shared')
  await waitFor(() => one.provider.synced, 10000, 'first editor synced')
  const two = editor(balanced, 'shared')
  await waitFor(() => two.provider.synced, 10000, 'second editor synced')

  const viewerDoc = new Y.Doc()
  const viewer = new SseProvider(c.httpUrl, 'shared', viewerDoc, { EventSourcePolyfill: EventSource })
  cleanups.push(() => { viewer.destroy(); viewerDoc.destroy() })
  const seen = viewerDoc.getText('t')

  one.text.insert(0, '[one]')
  two.text.insert(0, '[two]')
  await waitFor(() => one.text.length === 10 && one.text.toString() === two.text.toString(),
    10000, 'editors on A and B converge')
  await waitFor(() => seen.toString() === one.text.toString(), 10000, 'the viewer on C sees both')

  // Node A dies mid-edit: its editor keeps typing, reconnects through the
  // balancer (A refuses, so it lands on B) and resyncs.
  const typed = []
  for (let i = 0; i < 40; i++) {
    const token = `<${i}>`
    typed.push(token)
    one.text.insert(one.text.length, token)
    two.text.insert(0, '.')
    if (i === 20) await a.kill9()
    await new Promise(resolve => setTimeout(resolve, 5))
  }
  const full = () => typed.every(t => one.text.toString().includes(t))
  await waitFor(() => full() && one.text.toString() === two.text.toString(), 20000,
    'editors converge after the node died')
  await waitFor(() => seen.toString() === one.text.toString(), 10000, 'the viewer has it all')
  assert.equal(two.text.toString().split('.').length - 1, 40, 'every change from B arrived')

  // And it is all in Redis: a node started now loads the same text.
  const late = await new Weft(['--redis', redis]).start()
  cleanups.push(() => late.cleanup())
  const fresh = editor(late.wsUrl, 'shared')
  await waitFor(() => fresh.provider.synced && fresh.text.toString() === one.text.toString(),
    10000, 'a late node loads everything')
})
