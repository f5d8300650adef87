// The network edge under attack: connections that never send a request, or
// drip their headers, must not keep a real editor out or take the server's
// file descriptors.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import http from 'node:http'
import { readdirSync } from 'node:fs'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { Weft, waitFor } from './lib/weft.js'

const cleanups = []
after(async () => { for (const c of cleanups.reverse()) await c() })

const SILENT = 5000
const SLOW = 5000
const HEADER_TIMEOUT_MS = 10000

/** One GET /healthz on a connection of its own; resolves with its latency or an error. */
function healthz (addr) {
  const [host, port] = addr.split(':')
  const start = performance.now()
  return new Promise(resolve => {
    const req = http.get({ host, port, path: '/healthz', agent: false, timeout: 5000 }, res => {
      res.resume()
      res.on('end', () => resolve({ ok: res.statusCode === 200, ms: performance.now() - start }))
    })
    req.on('timeout', () => { req.destroy(); resolve({ ok: false, ms: performance.now() - start, why: 'timeout' }) })
    req.on('error', e => resolve({ ok: false, ms: performance.now() - start, why: e.code }))
  })
}

/** Opens one attacking socket; `drip` sends a header line a second and never ends them. */
function attacker (addr, drip, record) {
  const [host, port] = addr.split(':')
  return new Promise(resolve => {
    const opened = performance.now()
    const socket = net.connect({ host, port: Number(port) })
    let timer = null
    socket.on('connect', () => {
      resolve(socket)
      if (drip) {
        socket.write('GET /healthz HTTP/1.1\r\n')
        timer = setInterval(() => socket.write(`X-Slow-${Math.random().toString(36).slice(2)}: 1\r\n`), 1000)
      }
    })
    socket.on('error', () => {})
    socket.on('close', () => {
      clearInterval(timer)
      record(performance.now() - opened)
      resolve(socket)
    })
    socket.setTimeout(60000, () => socket.destroy())
  })
}

function openFds (pid) {
  try { return readdirSync(`/proc/${pid}/fd`).length } catch { return -1 }
}

test('5,000 silent and 5,000 slow-header connections neither keep an editor out nor exhaust descriptors', async () => {
  const weft = await new Weft().start()
  cleanups.push(() => weft.cleanup())

  // The document the editor will sync, written before the attack.
  const writer = new Y.Doc()
  writer.getText('t').insert(0, 'written before the attack')
  const post = await fetch(`${weft.httpUrl}/docs/edge/updates`, { method: 'POST', body: Y.encodeStateAsUpdate(writer) })
  assert.equal(post.status, 200)

  const lifetimes = []
  const sockets = []
  const attackStart = performance.now()
  let opened = 0
  // Open in batches: the listen backlog is finite, and a SYN dropped by a
  // full backlog would be retried a second later, blurring the timings.
  const opening = (async () => {
    for (let i = 0; i < SILENT + SLOW; i += 250) {
      const batch = []
      for (let j = i; j < Math.min(i + 250, SILENT + SLOW); j++) {
        batch.push(attacker(weft.addr, j % 2 === 1, ms => lifetimes.push(ms)))
      }
      sockets.push(...await Promise.all(batch))
      opened = performance.now() - attackStart
    }
  })()
  cleanups.push(() => { for (const s of sockets) s.destroy() })

  // While the attack is on: /healthz on fresh connections, the server's
  // descriptors, and a real editor joining.
  const probes = []
  let maxFds = 0
  let probing = true
  cleanups.push(() => { probing = false })
  const prober = (async () => {
    while (probing) {
      probes.push(await healthz(weft.addr))
      maxFds = Math.max(maxFds, openFds(weft.proc.pid))
      await new Promise(resolve => setTimeout(resolve, 200))
    }
  })()

  // The editor joins once the attack is well under way.
  await waitFor(() => sockets.length >= 2000, 15000, 'the attack to get going')
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(weft.wsUrl, 'edge', doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  cleanups.push(() => { provider.destroy(); doc.destroy() })
  await waitFor(() => provider.synced && doc.getText('t').toString() === 'written before the attack',
    15000 - (performance.now() - attackStart), 'the editor to sync within 15 s of the attack starting')
  const editorMs = performance.now() - attackStart
  await opening

  // Every attacking socket is closed by the server within the header timeout.
  await waitFor(() => lifetimes.length === SILENT + SLOW, HEADER_TIMEOUT_MS + 15000,
    () => `every attacking socket to be closed (${lifetimes.length} of ${SILENT + SLOW} were, opened in ${opened.toFixed(0)} ms)`)
  probing = false
  await prober
  const longest = Math.max(...lifetimes)
  const failed = probes.filter(p => !p.ok)
  const slowest = Math.max(...probes.map(p => p.ms))
  console.log(`edge: ${SILENT + SLOW} attacking sockets opened in ${opened.toFixed(0)} ms; editor synced after ${editorMs.toFixed(0)} ms; ` +
    `longest attacker lived ${longest.toFixed(0)} ms; ${probes.length} /healthz probes, ${failed.length} failed, slowest ${slowest.toFixed(1)} ms; ` +
    `server descriptors at most ${maxFds}`)
  // Counted from the client's connect, which under this load can take a
  // while to be accepted; the server's clock starts at accept.
  assert.ok(longest <= HEADER_TIMEOUT_MS + 2500, `an attacking socket lived ${longest} ms`)
  assert.equal(failed.length, 0, `/healthz failed during the attack: ${JSON.stringify(failed.slice(0, 3))}`)
  assert.ok(probes.length >= 10, 'probes ran throughout')
  // The default --max-pending-connections (4096) bounds what the attack
  // holds, plus at most 64 evicted sockets whose tasks have yet to close
  // them, plus the server's own files.
  assert.ok(maxFds > 0 && maxFds < 4096 + 200, `the server held ${maxFds} descriptors`)
})
